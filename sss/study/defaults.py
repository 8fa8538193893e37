"""What a study file may leave out: the scales' settings, the datasets by name, the summaries."""
from __future__ import annotations

from typing import Dict

__all__ = ["DATA_ENV", "DATASETS", "EDITED_BLOCK", "SCALE_NAMES", "SCALES", "SUMMARIES", "TRAINING_DATA"]

SUMMARIES = ("table", "sequential", "categories", "c_sweep", "sss_metric")
SCALE_NAMES = ("smoke", "cpu", "gpu")
DATA_ENV = "SSS_STUDY_DATA"
# The block FT-L edits, resolved against the model when the cell runs (the third reading).
EDITED_BLOCK = "edited_block"

# The paper trains MEND and SERAC on ZsRE and reports CounterFact as out of domain (Table 1), and
# reuses those checkpoints for Tables 3 and 5: one training set serves every experiment. ZsRE has
# one file here, so its slices are disjoint by position (and checked by prompt).
DATASETS: Dict[str, dict] = {
    "zsre": {"eval": "zsre/zsre_mend_train-1k.json", "eval_slice": [800, None]},
    "counterfact": {"eval": "counterfact/counterfact-val.json"},
    "counterfact-rome": {"eval": "rome/counterfact-rome-sample100.json"},
    "knowedit-wiki": {"eval": "knowedit/wiki_counterfact-train-sample200.json"},
    "knowedit-zsre": {"eval": "knowedit/ZsRE-test-sample200.json"},
    "demo": {"eval": "demo"},
}
TRAINING_DATA = {"train": "zsre/zsre_mend_train-1k.json", "train_slice": [0, 700], "val_slice": [700, 800]}

# Per-scale defaults; a file's [scales.NAME] overrides any of them. Each editor's options at a
# scale start from what its class declares (``Editor.study_options``).
SCALES: Dict[str, dict] = {
    "smoke": {"model": "tiny-gpt2", "device": "cpu", "eval_requests": 3, "seeds": [0], "sizes": [1, 2, 4],
              "generate": False, "eval_batch_size": 32, "train_requests": 16, "val_requests": 4,
              "train_steps": 2, "episodes_per_step": 1, "edit_batch_size": 1, "val_every": 2, "val_episodes": 2,
              "train_lr": {}, "editors": {}},
    "cpu": {"model": "smollm2-135m", "device": "cpu", "eval_requests": 100, "seeds": [0, 1, 2], "sizes": [1, 10, 100],
            "generate": False, "eval_batch_size": 32, "train_requests": 700, "val_requests": 50,
            "train_steps": 40, "episodes_per_step": 5, "edit_batch_size": 1, "val_every": 20, "val_episodes": 20,
            "train_lr": {}, "editors": {}},
    "gpu": {"model": "gpt2-xl", "device": "cuda", "eval_requests": None, "seeds": [0, 1, 2],
            "sizes": [1, 10, 100, 1000], "generate": True, "eval_batch_size": 64, "train_requests": 700,
            "val_requests": 100, "train_steps": 1000, "episodes_per_step": 10, "edit_batch_size": 1,
            "val_every": 100, "val_episodes": 50, "train_lr": {}, "editors": {}},
}
