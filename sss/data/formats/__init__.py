"""The dataset formats sss reads, one module each, and the table that names them.

Detection tries them in this order, most specific first, and takes the first whose required
keys a record carries.
"""
from .base import Format, ReadStats
from . import counterfact, knowedit, rome, zsre

REGISTRY = {module.FORMAT.name: module.FORMAT for module in (zsre, counterfact, rome, knowedit)}
FORMATS = tuple(REGISTRY)  # ("zsre", "counterfact", "counterfact-rome", "knowedit")
DETECTION_ORDER = ("counterfact-rome", "zsre", "counterfact", "knowedit")

__all__ = ["Format", "ReadStats", "REGISTRY", "FORMATS", "DETECTION_ORDER"]
