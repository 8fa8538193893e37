"""Editors: one small module each, all behind ``Editor.edit(requests) -> EditHandle``."""
from .base import EDITORS, EditHandle, EditSession, Editor, EditorConfig, WeightEditHandle, editor_class, register_editor
from .ft import FTL, FTLConfig
from .mend import MEND, MENDConfig
from .serac import SERAC, SERACConfig

__all__ = ["EDITORS", "EditHandle", "EditSession", "Editor", "EditorConfig", "WeightEditHandle", "editor_class",
           "register_editor", "FTL", "FTLConfig", "MEND", "MENDConfig", "SERAC", "SERACConfig"]
