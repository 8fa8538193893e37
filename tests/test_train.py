"""The shared training loop: episodes, checkpoints, early stopping, and exact resume after a crash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sss import MEND, EditRequest, LocalityProbe, load_model
from sss.train import EpisodeStream, TrainConfig, read_checkpoint, train, write_checkpoint
from synthetic_edits import train_and_heldout


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


def requests(n, with_locality=False):
    return [EditRequest(f"Prompt number {i} says", f"answer{i}",
                        locality=[LocalityProbe(f"Unrelated {i} {k}", "x") for k in range(2)] if with_locality else ())
            for i in range(n)]


class Toy:
    """A Trainable whose loss is a quadratic of its features; validation loss can be scripted."""

    def __init__(self, val_losses=None):
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.val_losses = list(val_losses or [])
        self.validations = 0

    def trainable_module(self):
        return self.net

    def param_groups(self):
        return [{"name": "net", "params": list(self.net.parameters()), "lr": 0.05}]

    def _loss(self, episode):
        x = torch.tensor([[len(r.prompt) % 7, len(r.target_new) % 3, 1.0] for r in episode.requests])
        return ((self.net(x) - 1.0) ** 2).mean()

    def training_loss(self, episode):
        loss = self._loss(episode)
        return loss, {"edit_loss": float(loss.detach())}

    def validation_metrics(self, episode):
        self.validations += 1
        if self.val_losses:
            return {"edit_loss": self.val_losses[(self.validations - 1) // 2]}  # two val episodes per round
        with torch.no_grad():
            return {"edit_loss": float(self._loss(episode))}

    def state_dict(self):
        return {k: v.clone() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state)

    def checkpoint_config(self):
        return {"editor": "toy", "model": {"name": "none"}}


def log_records(folder, kind=None):
    lines = (Path(folder) / "train_log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if kind is None or r["kind"] == kind]


def test_episodes_are_a_pure_function_of_seed_and_index():
    data = requests(10)
    stream, again = EpisodeStream(data, 3, seed=4), EpisodeStream(data, 3, seed=4)
    assert len(stream) == 3  # 10 // 3, the remainder dropped per epoch
    assert [stream.episode(k) for k in range(7)] == [again.episode(k) for k in reversed(range(7))][::-1]
    first_epoch = [r for k in range(3) for r in stream.episode(k).requests]
    assert len(set(first_epoch)) == 9  # an epoch never repeats a request
    assert EpisodeStream(data, 3, seed=5).episode(0) != stream.episode(0)
    for k in range(6):  # without probes, the out-of-scope input is another request's prompt
        episode = stream.episode(k)
        assert all(p.prompt not in {r.prompt for r in episode.requests} for p in episode.locality)
    with_probes = EpisodeStream(requests(4, with_locality=True), 2, seed=0)
    # a request's own probes are used, one per epoch in turn
    own = [with_probes.episode(k).locality for k in (0, 2)]
    assert {p.prompt[-1] for p in own[0]} == {"0"} and {p.prompt[-1] for p in own[1]} == {"1"}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="episodes_per_step"):
        TrainConfig(episodes_per_step=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr={"net": -1.0})
    with pytest.raises(ValueError, match="unknown param group"):
        train(Toy(), requests(4), config=TrainConfig(lr={"other": 1e-3}, progress=False))
    with pytest.raises(ValueError, match="at least edit_batch_size"):
        train(Toy(), requests(2), config=TrainConfig(edit_batch_size=3, progress=False))
    with pytest.raises(ValueError, match="lacks"):
        train(object(), requests(4), config=TrainConfig(progress=False))
    with pytest.raises(ValueError, match="early_stop_key 'accuracy' is not a validation metric"):
        train(Toy(), requests(4), requests(2), TrainConfig(early_stop_key="accuracy", progress=False))


def test_checkpoint_files_round_trip_without_pickle(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    write_checkpoint(tmp_path / "ck", tensors, {"name": "x", "shape": (3, 2)}, {"more.json": {"k": 1}})
    loaded, config = read_checkpoint(tmp_path / "ck")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors) and config == {"name": "x", "shape": [3, 2]}
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json", "manifest.json", "more.json", "weights.safetensors"]
    with pytest.raises(ValueError, match="not an sss checkpoint"):
        read_checkpoint(tmp_path)


def test_early_stopping_keeps_and_restores_the_best(tmp_path):
    toy = Toy(val_losses=[5.0, 3.0, 4.0, 4.5, 9.0, 1.0])  # best at the 2nd validation, then 2 worse ones
    result = train(toy, requests(8), requests(4), TrainConfig(edit_batch_size=2, episodes_per_step=2, max_steps=50,
                                                            val_every=2, patience=2, out_dir=str(tmp_path),
                                                            progress=False))
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    vals = log_records(tmp_path, "val")
    assert [v["step"] for v in vals] == [0, 2, 4, 6] and [v["edit_loss"] for v in vals] == [5.0, 3.0, 4.0, 4.5]
    best, config = read_checkpoint(tmp_path / "best")
    assert config["step"] == 2 and config["metrics"]["edit_loss"] == 3.0 and config["train"]["patience"] == 2
    assert all(torch.equal(best[k], v) for k, v in toy.state_dict().items())  # restored to the best
    assert [r["step"] for r in log_records(tmp_path, "train")] == list(range(1, 7))


def test_resume_refuses_a_different_run(tmp_path):
    train(Toy(), requests(8), requests(4), TrainConfig(edit_batch_size=2, max_steps=2, val_every=1,
                                                       out_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="edit_batch_size: checkpoint 2, now 4"):
        train(Toy(), requests(8), requests(4), TrainConfig(edit_batch_size=4, max_steps=4, val_every=1,
                                                           out_dir=str(tmp_path), progress=False))


class Crash(Exception):
    pass


class CrashingMEND(MEND):
    """MEND that dies in its ``crash_at``-th training episode (like a killed process)."""

    crash_at = None
    calls = 0

    def training_loss(self, episode):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash()
        return super().training_loss(episode)


def mend_run(out_dir, crash_at=None, max_steps=6):
    model, tokenizer = load_model("tiny-gpt2")
    editor = CrashingMEND(model, tokenizer, rank=8, lr=1e-3, lr_lr=1e-4, progress=False)
    editor.crash_at = crash_at
    train_requests, val_requests = train_and_heldout()
    config = TrainConfig(edit_batch_size=1, episodes_per_step=2, max_steps=max_steps, val_every=2, val_episodes=2,
                         patience=None, out_dir=str(out_dir), progress=False)
    return editor, editor.fit(train_requests, val_requests, config)


def test_killed_training_resumes_with_the_same_losses(tmp_path):
    whole, _ = mend_run(tmp_path / "whole")
    # Episodes 1-10 are steps 1-5; the crash hits step 6, after step 5 was logged but after the
    # latest checkpoint (step 4).
    with pytest.raises(Crash):
        mend_run(tmp_path / "killed", crash_at=11)
    assert [r["step"] for r in log_records(tmp_path / "killed", "train")][-1] == 5
    resumed, result = mend_run(tmp_path / "killed")
    assert result.steps == 6 and resumed.calls == 4  # steps 5 and 6 only

    def strip(records):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]

    assert strip(log_records(tmp_path / "killed")) == strip(log_records(tmp_path / "whole"))
    final_whole, final_resumed = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    # the running statistics went on accumulating across the resume
    assert float(final_resumed["transforms.64x256.norm.count"]) > 0
