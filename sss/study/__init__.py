"""Studies: the paper's experiments as grids of resumable cells (editors x data x regularizers x seeds).

``load_study(path, scale=...)`` reads a grid (``studies/*.toml``), ``run_study(study, out)`` runs
its unfinished cells, ``summarise_study(study, out)`` writes its tables and figures; ``stats``
holds the paired statistics they use. docs/study.md describes the files, the scales and the
resume semantics.
"""
from .identity import cell_identity, stale_folders
from .runner import CellStatus, cell_folder, run_cell, run_study, select_cells, study_status
from .spec import DATASETS, SCALES, Cell, DataSpec, Study, config_hash, load_study
from ..eval.statistics import (Correlation, Interval, PairedComparison, compare_paired, format_cell, hierarchical_bootstrap,
                    paired_bootstrap, sign_flip_test, spearman, spearman_bootstrap, unpaired_bootstrap)
from .summary import summarise_study

__all__ = ["DATASETS", "SCALES", "Cell", "CellStatus", "DataSpec", "Study", "cell_folder", "cell_identity", "config_hash",
           "load_study", "run_cell", "run_study", "select_cells", "stale_folders", "study_status", "summarise_study",
           "Correlation", "Interval", "PairedComparison", "compare_paired", "format_cell", "hierarchical_bootstrap",
           "paired_bootstrap", "sign_flip_test", "spearman", "spearman_bootstrap", "unpaired_bootstrap"]
