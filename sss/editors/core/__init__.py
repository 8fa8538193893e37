"""What every editor shares: the ``Editor`` contract, configs and their checks, the registry,
handles, transactions, sessions, and the block capture that runs a model's frozen lower part once."""
from .config import EditorConfig, OuterLossConfig
from .editor import Editor
from .handles import EditHandle, forget_edits
from .session import EditSession
from .transaction import transaction
from .registry import EDITORS, discover, editor_class, editor_names, register_editor
from .weight_handle import WeightEditHandle, snapshot

__all__ = ["EDITORS", "EditHandle", "EditSession", "Editor", "EditorConfig", "OuterLossConfig", "WeightEditHandle",
           "discover", "editor_class", "editor_names", "forget_edits", "register_editor", "snapshot", "transaction"]
