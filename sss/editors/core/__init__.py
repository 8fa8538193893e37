"""What every editor shares: the ``Editor`` contract, configs, the registry, handles, transactions,
sessions, and the block capture that runs a model's frozen lower part once."""
from .base import (EDITORS, EditHandle, EditSession, Editor, EditorConfig, OuterLossConfig, WeightEditHandle,
                   editor_class, forget_edits, register_editor, snapshot)

__all__ = ["EDITORS", "EditHandle", "EditSession", "Editor", "EditorConfig", "OuterLossConfig", "WeightEditHandle",
           "editor_class", "forget_edits", "register_editor", "snapshot"]
