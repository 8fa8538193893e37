"""The registry of editors: the one place the command line, the study and ``sss``'s names read.

An editor registers itself with :func:`register_editor`, and that is the only step: the editors
that ship with sss are the packages under ``sss/editors/`` (each imported by :func:`discover`),
and an editor in another installed package joins through the ``sss.editors`` entry-point group,
the ecosystem's plugin convention::

    [project.entry-points."sss.editors"]
    my-editor = "my_package.editor"      # a module whose import registers the editor
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from importlib import metadata
from typing import TYPE_CHECKING, Dict, List, Optional, Type

if TYPE_CHECKING:
    from .editor import Editor

__all__ = ["EDITORS", "ENTRY_POINT_GROUP", "discover", "editor_class", "editor_names", "register_editor"]

ENTRY_POINT_GROUP = "sss.editors"
EDITORS: Dict[str, Type["Editor"]] = {}
_discovered = False


def register_editor(name: str, display: Optional[str] = None):
    """Class decorator: make an editor reachable by name (``sss eval --editor NAME``, studies, checkpoints).

    ``display`` is how reports and tables name it (default: ``name``), e.g. ``"FT-L"``.
    """

    def decorate(cls):
        if not isinstance(name, str) or not name or name != name.strip() or name == "all":
            raise ValueError(f"an editor's name must be a non-empty word other than 'all', got {name!r}")
        known = EDITORS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"two editors are registered as {name!r}: {known.__module__}.{known.__qualname__} "
                             f"and {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        cls.display_name = display or name
        EDITORS[name] = cls
        return cls

    return decorate


def discover() -> Dict[str, Type["Editor"]]:
    """Import every editor package of sss and every ``sss.editors`` entry point (once); return the registry.

    A plugin that fails to import is reported (a ``RuntimeWarning``) and left out, so one broken package cannot take the
    command line down with it.
    """
    global _discovered
    if _discovered:
        return EDITORS
    _discovered = True
    import sss.editors as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg and module.name != "core":
            importlib.import_module(f"{package.__name__}.{module.name}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # noqa: a plugin's own bug must not stop sss
            # A warning, not a log record: a library's logs are silent unless configured.
            warnings.warn(f"editor plugin {entry.name!r} ({entry.value}) failed to load and is left out: "
                          f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
    return EDITORS


def editor_names() -> List[str]:
    """Every registered editor's name, in the order they registered (sss's own first)."""
    return list(discover())


def editor_class(name: str) -> Type["Editor"]:
    if name not in discover():
        raise ValueError(f"unknown editor {name!r}; known editors: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]
