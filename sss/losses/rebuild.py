"""Rebuilding a regularizer from the description a checkpoint stored (``regularizer.describe()``)."""
from __future__ import annotations

from typing import Dict, Optional, Type

from .base import SparsityRegularizer
from .sss import SSSRegularizer

# Class name (the description's "name") -> class. Custom regularizers join with register_regularizer.
REGULARIZERS: Dict[str, Type[SparsityRegularizer]] = {"SSSRegularizer": SSSRegularizer}


def register_regularizer(cls: Type[SparsityRegularizer]) -> Type[SparsityRegularizer]:
    """Make ``cls`` rebuildable by :func:`regularizer_from_description` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, SparsityRegularizer)):
        raise ValueError(f"{cls!r} is not a SparsityRegularizer subclass")
    REGULARIZERS[cls.__name__] = cls
    return cls


def regularizer_from_description(description: Optional[dict]) -> Optional[SparsityRegularizer]:
    """The regularizer whose ``describe()`` gave ``description``; ``None`` stays ``None``.

    The description is ``{"name": <class name>, <constructor option>: <value>, ...}``. An unknown
    class name or an option its constructor does not take is a ``ValueError`` naming it.
    """
    if description is None:
        return None
    if not isinstance(description, dict) or "name" not in description:
        raise ValueError(f"a regularizer description is a dict with a 'name', got {description!r}")
    name = description["name"]
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r} in {description!r}; sss can rebuild: "
                         f"{', '.join(sorted(REGULARIZERS))} (add others with register_regularizer)")
    options = {k: v for k, v in description.items() if k != "name"}
    try:
        return REGULARIZERS[name](**options)
    except TypeError as error:  # an option the class does not take
        raise ValueError(f"cannot rebuild {name} from {description!r}: {error}") from error
