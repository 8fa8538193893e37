"""Editors: one package each, all behind ``Editor.edit(requests) -> EditHandle``; ``core`` holds the contract."""
from .core import EDITORS, EditHandle, EditSession, Editor, EditorConfig, WeightEditHandle, editor_class, register_editor
from .ftl import FTL, FTLConfig
from .mend import MEND, MENDConfig
from .serac import SERAC, SERACConfig

__all__ = ["EDITORS", "EditHandle", "EditSession", "Editor", "EditorConfig", "WeightEditHandle", "editor_class",
           "register_editor", "FTL", "FTLConfig", "MEND", "MENDConfig", "SERAC", "SERACConfig"]
