"""sss: knowledge editing (FT-L, MEND, SERAC and every registered editor) with the SSS regularizer."""
from .data import EditRequest, LocalityProbe, PortabilityProbe
from .editors import EditHandle, Editor, public_names
from .eval import evaluate
from .losses import SparsityRegularizer, SSSRegularizer, sss_loss, sss_penalty
from .models import load_model
from .version import __version__

# Every registered editor class by its class name (FTL, MEND, SERAC, ...): a new editor package
# (or an installed plugin) becomes `from sss import NAME` with no line here.
_EDITOR_CLASSES = {name: cls for name, cls in public_names().items() if issubclass(cls, Editor)}
globals().update(_EDITOR_CLASSES)

__all__ = ["EditRequest", "LocalityProbe", "PortabilityProbe", "Editor", "EditHandle", *_EDITOR_CLASSES,
           "SparsityRegularizer", "SSSRegularizer", "evaluate", "load_model", "sss_loss", "sss_penalty", "__version__"]
