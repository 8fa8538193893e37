"""Editors: one package each (``ftl/``, ``mend/``, ``serac/``, ...), all behind
``Editor.edit(requests) -> EditHandle``; ``core/`` holds the contract they share.

Every package here, and every editor of another installed package that declares an ``sss.editors``
entry point, is imported by :func:`~.core.discover`; each registers itself, and this package (and
``sss``) then offer every registered editor class and its config class by name
(``from sss.editors import FTL, FTLConfig``).
"""
from .core import (EDITORS, EditHandle, EditSession, Editor, EditorConfig, WeightEditHandle, discover, editor_class,
                   editor_names, register_editor)


def public_names() -> dict:
    """``{class name: class}`` of every registered editor and its config class."""
    names = {}
    for cls in discover().values():
        names[cls.__name__] = cls
        names[cls.config_class.__name__] = cls.config_class
    return names


globals().update(public_names())

__all__ = ["EDITORS", "EditHandle", "EditSession", "Editor", "EditorConfig", "WeightEditHandle", "discover",
           "editor_class", "editor_names", "public_names", "register_editor", *public_names()]
