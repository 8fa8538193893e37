"""Two processes under torchrun (gloo, DDP) train MEND exactly as one process with the same global batch.

Both runs go through the command line, ``sss train mend``, on a small ZsRE-format file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sss.cli import main
from synthetic_edits import train_and_heldout


def zsre_records(requests):
    return [{"src": r.prompt, "rephrase": r.rephrase_prompts[0], "alt": r.target_new, "answers": ["unknown"],
             "loc": f"nq question: who wrote the song number {i}", "loc_ans": "nobody"}
            for i, r in enumerate(requests)]


def train_args(data: Path, out: Path):
    return ["train", "mend", "--model", "tiny-gpt2", "--train", str(data), "--val", str(data), "--val-limit", "4",
            "--out", str(out), "--max-steps", "3", "--episodes-per-step", "4", "--edit-batch-size", "1",
            "--val-every", "100", "--val-episodes", "2", "--option", "rank=8", "--lr", "network=1e-3",
            "--lr", "edit_lr=1e-3", "--no-progress"]


def train_losses(out: Path):
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]


def test_two_processes_match_one(tmp_path):
    train, _ = train_and_heldout()
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(zsre_records(train[:16])))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "sss"] + train_args(data, tmp_path / "two")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])  # only rank 0 prints
    assert summary["steps"] == 3 and done.stdout.count('"steps"') == 1

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_args(data, tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(before)

    one = load_file(str(tmp_path / "one" / "latest" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "latest" / "weights.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5, msg=key)
    # The runs really trained: step sizes moved, and the normaliser saw every rank's tokens.
    assert not torch.allclose(one["edit_lrs"], torch.full_like(one["edit_lrs"], 1e-4))
    assert float(two["transforms.64x256.norm.count"]) == float(one["transforms.64x256.norm.count"])
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5)
    # Only rank 0 writes: the run folder holds one run's files and nothing per rank.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best", "latest", "progress.json",
                                                                    "train_log.jsonl"]
