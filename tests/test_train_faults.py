"""Damaged training folders: every fault stops a rerun with an error naming the file, or is safely recovered.

One short MEND run on tiny-gpt2 (4 steps, latest/ and best/ at steps 2 and 4) is copied for each
case, one file is deleted, truncated or has one byte flipped, and the run is started again. It
must stop with a ``ValueError`` that names the damaged file and the way to recover, and leave the
folder as it was: in particular the log is never cut or deleted (the bug this guards against
restarted from step 0 and deleted the log).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from sss import MEND, load_model
from sss.train import TrainConfig, checkpoint_to_resume, load_tensors
from synthetic_edits import train_and_heldout

LATEST_FILES = ("weights.safetensors", "config.json", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
                "loop.json", "manifest.json")
BEST_FILES = ("weights.safetensors", "config.json", "manifest.json")
FAULTS = ("delete", "truncate", "flip")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2")


def fit(tiny, out: Path, max_steps: int = 4, resume: bool = True):
    editor = MEND(*tiny, rank=8, lr=1e-3, lr_lr=1e-4, progress=False)
    train_requests, val_requests = train_and_heldout()
    config = TrainConfig(edit_batch_size=1, episodes_per_step=2, max_steps=max_steps, val_every=2, val_episodes=2,
                         patience=None, out_dir=str(out), resume=resume, progress=False)
    return editor, editor.fit(train_requests, val_requests, config)


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("template") / "run"
    fit(tiny, out)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def damage(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "delete":
        path.unlink()
    elif fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit of one byte in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(tiny, out: Path, *names: str) -> str:
    before = snapshot(out)
    with pytest.raises(ValueError) as raised:
        fit(tiny, out, max_steps=6)
    message = str(raised.value)
    for name in names:
        assert name in message
    assert "--no-resume" in message  # says how to recover
    assert snapshot(out) == before  # nothing changed: the log is neither cut nor deleted
    return message


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", LATEST_FILES)
def test_a_damaged_latest_stops_the_rerun_naming_the_file(tiny, finished_run, tmp_path, name, fault):
    out = copy_of(finished_run, tmp_path)
    damage(out / "latest" / name, fault)
    # A flipped byte inside the manifest may land in another file's digest: then that file is named.
    assert_refused(tiny, out, str(out / "latest"), *([] if name == "manifest.json" and fault == "flip" else [name]))
    with pytest.raises(ValueError, match="latest"):
        checkpoint_to_resume(out)  # the same check the command line runs before it loads a model


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", BEST_FILES)
def test_a_damaged_best_stops_the_rerun_and_refuses_to_load(tiny, finished_run, tmp_path, name, fault):
    out = copy_of(finished_run, tmp_path)
    damage(out / "best" / name, fault)
    named = [] if name == "manifest.json" and fault == "flip" else [name]
    assert_refused(tiny, out, str(out / "best"), *named)
    with pytest.raises(ValueError) as raised:
        MEND.from_checkpoint(out, *tiny)
    assert str(out / "best") in str(raised.value) and all(n in str(raised.value) for n in named)


def test_a_deleted_latest_folder_is_not_a_fresh_start(tiny, finished_run, tmp_path):
    out = copy_of(finished_run, tmp_path)
    shutil.rmtree(out / "latest")
    assert "records a checkpoint at step 4" in assert_refused(tiny, out, str(out / "latest"))


def test_no_resume_recovers_and_keeps_the_earlier_files(tiny, finished_run, tmp_path):
    out = copy_of(finished_run, tmp_path)
    damage(out / "latest" / "loop.json", "delete")
    before = snapshot(out)
    _, result = fit(tiny, out, max_steps=2, resume=False)
    assert result.steps == 2
    kept = snapshot(out / "previous-1")
    assert kept == before  # every earlier file moved aside byte for byte, the damaged one too
    assert (out / "latest" / "manifest.json").is_file() and checkpoint_to_resume(out) == out / "latest"


def test_a_run_killed_before_its_first_checkpoint_starts_again_keeping_its_log(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    _, result = fit(tiny, out, max_steps=2)
    assert result.steps == 2
    assert (out / "previous-1" / "train_log.jsonl").read_text() == '{"kind": "train", "step": 1, "loss": 1.0}\n'


def test_a_torn_last_log_line_is_dropped_with_a_warning(tiny, finished_run, tmp_path, caplog):
    out = copy_of(finished_run, tmp_path)
    log = out / "train_log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"kind": "train", "step": 5, "lo')  # a kill in the middle of an append
    with caplog.at_level(logging.WARNING):
        _, result = fit(tiny, out, max_steps=6)
    assert result.steps == 6
    assert any("train_log.jsonl" in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    text = log.read_text()
    assert text.startswith(whole)  # the earlier records are all kept, unchanged
    import json

    steps = [json.loads(line)["step"] for line in text.splitlines() if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_damaged_safetensors_file_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match="weights.safetensors is not a readable safetensors file"):
        load_tensors(path)


def test_a_loss_that_turns_non_finite_stops_training_before_the_weights_do(tiny, tmp_path, monkeypatch):
    """As a NaN learning rate or gradient clip would make it (those settings are refused up front)."""
    calls = {"n": 0}
    loss = MEND.training_loss

    def turns_nan(self, episode):
        calls["n"] += 1
        value, logs = loss(self, episode)
        return (value * float("nan"), logs) if calls["n"] > 4 else (value, logs)  # from step 3 (2 episodes a step)

    monkeypatch.setattr(MEND, "training_loss", turns_nan)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"training stopped at step 3: the loss is nan"):
        fit(tiny, out, max_steps=6)
    latest = load_tensors(out / "latest" / "weights.safetensors")
    assert latest and all(bool(t.isfinite().all()) for t in latest.values())  # step 2's checkpoint, whole


def test_latest_replaced_by_a_link_to_a_good_copy_resumes_and_keeps_the_copy(tiny, finished_run, tmp_path):
    """The documented recovery (put back a good copy), done with a symbolic link."""
    out = copy_of(finished_run, tmp_path)
    good = tmp_path / "good-copy"
    shutil.move(out / "latest", good)
    (out / "latest").symlink_to(good, target_is_directory=True)
    kept = snapshot(good)
    _, result = fit(tiny, out, max_steps=8)
    assert result.steps == 8
    assert (out / "latest").is_dir() and not (out / "latest").is_symlink() and snapshot(good) == kept
    assert not (out / "latest.old").exists()
    checkpoint_to_resume(out)  # the new latest/ verifies
