"""The training loop itself: steps, validation, early stopping, checkpoints, resume, DDP.

One class holds the loop's state, and steps, checkpoints and resume all read and write that
state; what a run folder holds on a rerun (and whether a resume may continue it) is decided in
:mod:`.run_folder`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import distributed
from ..data import EditRequest
from ..files import append_jsonl, read_json
from ..progress import counter
from .checkpoint import LOG_FILE, TRAINABLE_KEY, load_optimizer, optimizer_files, read_checkpoint, write_checkpoint
from .collective import all_reduce_sum, rng_states, set_rng_states
from .config import Episode, Trainable, TrainConfig, TrainResult, check_trainable
from .episodes import EpisodeStream
from .run_folder import (LOOP_FILE, checkpoint_to_resume, record_latest, recovery_hint, resume_differences,
                         set_aside_earlier_run, truncate_log)

logger = logging.getLogger("sss.train")

class _LossModule(nn.Module):
    """What DDP wraps: the trainable's module, with the trainable's loss as its forward.

    DDP averages gradients only for backward passes of outputs of its own forward call, so the
    editor's loss has to be computed inside it.
    """

    def __init__(self, trainable: Trainable):
        super().__init__()
        self.inner = trainable.trainable_module()
        self._trainable = (trainable,)  # a tuple keeps the trainable out of the module tree

    def forward(self, episode: Episode):
        return self._trainable[0].training_loss(episode)


class _Trainer:
    def __init__(self, trainable: Trainable, train_requests, val_requests, config: TrainConfig):
        check_trainable(trainable)
        self.trainable = trainable
        self.config = config
        self.world = distributed.world_size()
        self.rank = distributed.rank()
        if config.episodes_per_step % self.world:
            raise ValueError(f"episodes_per_step={config.episodes_per_step} must be a multiple of the "
                             f"world size {self.world} (each rank takes an equal share)")
        if not train_requests:
            raise ValueError("train() needs training requests")
        self.train_stream = EpisodeStream(train_requests, config.edit_batch_size, config.seed)
        self.val_episodes = self._validation_episodes(val_requests)
        self.out = Path(config.out_dir) if config.out_dir else None
        self.main = distributed.is_main()

        self.module = _LossModule(trainable)
        self.groups = self._param_groups()
        trained = {id(p) for g in self.groups for p in g["params"]}
        stray = [n for n, p in self.module.inner.named_parameters() if p.requires_grad and id(p) not in trained]
        if stray:
            raise ValueError(f"parameters that require grad but are in no param group: {stray[:5]}")
        self.optimizer = torch.optim.Adam(self.groups)
        self.ddp = None
        if distributed.is_initialized() and self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = next(self.module.inner.parameters()).device
            # Buffers (e.g. MEND's running statistics) are kept identical by after_optimizer_step,
            # not by DDP's rank-0 broadcast, which would drop the other ranks' statistics.
            self.ddp = DistributedDataParallel(
                self.module, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False,
                find_unused_parameters=bool(getattr(trainable, "find_unused_parameters", False)))

        # Loop state (what loop.json stores).
        self.step = 0
        self.best_loss = math.inf
        self.best_step: Optional[int] = None
        self.best_metrics: Optional[Dict[str, float]] = None
        self.bad_validations = 0
        self.best_state: Optional[Dict[str, torch.Tensor]] = None

    def _param_groups(self) -> List[dict]:
        groups = []
        names = set()
        for group in self.trainable.param_groups():
            if "params" not in group or "name" not in group:
                raise ValueError("each param group needs 'name' and 'params'")
            group = dict(group)
            group["params"] = [p for p in group["params"] if p.requires_grad]
            if group["name"] in self.config.lr:
                group["lr"] = self.config.lr[group["name"]]
            names.add(group["name"])
            groups.append(group)
        unknown = sorted(set(self.config.lr) - names)
        if unknown:
            raise ValueError(f"TrainConfig.lr names unknown param group(s) {unknown}; groups are {sorted(names)}")
        return groups

    def _validation_episodes(self, val_requests) -> List[Episode]:
        if not val_requests:
            return []
        stream = EpisodeStream(val_requests, self.config.edit_batch_size, self.config.seed, shuffle=False)
        count = len(stream) if self.config.val_episodes is None else min(len(stream), self.config.val_episodes)
        return [stream.episode(k) for k in range(count)]

    # -- one step -------------------------------------------------------------------------------

    def _train_step(self) -> Dict[str, float]:
        per_rank = self.config.episodes_per_step // self.world
        mine = [self.step * self.config.episodes_per_step + self.rank + self.world * i for i in range(per_rank)]
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        values: List[Dict[str, float]] = []
        for i, k in enumerate(mine):
            episode = self.train_stream.episode(k)
            # DDP reduces gradients on the last backward of the step only.
            sync = self.ddp.no_sync() if (self.ddp is not None and i < len(mine) - 1) else contextlib.nullcontext()
            with sync:
                loss, logs = (self.ddp or self.module)(episode)
                (loss / per_rank).backward()
            values.append({"loss": float(loss.detach())} | {k: float(v) for k, v in dict(logs).items()})
        record = self._global_means(values)  # over the whole global batch (every rank sees the same)
        if not math.isfinite(record["loss"]):  # stop before the step writes NaN into the weights
            raise ValueError(f"training stopped at step {self.step + 1}: the loss is {record['loss']} (not finite); "
                             "the last checkpoint is intact. Lower the learning rate or clip gradients harder")
        grad_norm = None
        if self.config.grad_clip is not None:
            params = [p for g in self.groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        self.optimizer.step()
        after = getattr(self.trainable, "after_optimizer_step", None)
        if callable(after):
            after(all_reduce_sum)
        self.step += 1
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    def _validate(self) -> Dict[str, float]:
        self.module.eval()
        mine = distributed.shard(self.val_episodes) if self.world > 1 else self.val_episodes
        values = []
        for episode in mine:
            metrics = self.trainable.validation_metrics(episode)
            if "edit_loss" not in metrics:
                raise ValueError(f"{type(self.trainable).__name__}.validation_metrics must return 'edit_loss'")
            values.append({k: float(v) for k, v in metrics.items()})
        return self._global_means(values)

    def _global_means(self, values: List[Dict[str, float]]) -> Dict[str, float]:
        """Each key's mean over the episodes of every rank that report it."""
        keys = sorted({k for v in values for k in v})
        if self.world > 1:  # every rank must reduce the same keys in the same order
            keys = sorted({k for part in distributed.gather_objects(keys, to_all=True) for k in part})
        sums = [sum(v.get(k, 0.0) for v in values) for k in keys]
        counts = [sum(k in v for v in values) for k in keys]
        totals = all_reduce_sum(torch.tensor(sums + counts, dtype=torch.float64))
        return {k: float(totals[i] / totals[len(keys) + i]) for i, k in enumerate(keys)}

    # -- files ----------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self.main and self.out is not None:
            append_jsonl(self.out / LOG_FILE, record)  # whole line or none; a torn tail is cut first

    def _checkpoint_config(self, metrics: Optional[dict]) -> dict:
        return {TRAINABLE_KEY: self.trainable.checkpoint_config(), "train": self.config.to_dict(),
                "step": self.step, "metrics": metrics}

    def _save_best(self, metrics: dict) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.trainable.state_dict().items()}
        if self.main and self.out is not None:
            write_checkpoint(self.out / "best", self.best_state, self._checkpoint_config(metrics))

    def _save_latest(self) -> None:
        if self.out is None:
            return
        rng = rng_states()  # collective: every rank takes part
        if not self.main:
            return
        loop = {"step": self.step, "episodes_consumed": self.step * self.config.episodes_per_step,
                "best_loss": None if math.isinf(self.best_loss) else self.best_loss, "best_step": self.best_step,
                "best_metrics": self.best_metrics, "bad_validations": self.bad_validations, "world_size": self.world}
        files = optimizer_files(self.optimizer) | {"rng.safetensors": rng, LOOP_FILE: loop}
        write_checkpoint(self.out / "latest", self.trainable.state_dict(), self._checkpoint_config(None), files)
        record_latest(self.out, self.step)  # from now on a missing latest/ is an error, not a fresh start

    def _resume(self) -> bool:
        """Continue from a verified ``latest/``; False to start at step 0 (see :mod:`.run_folder`)."""
        folder = checkpoint_to_resume(self.out, self.config.resume) if self.out is not None else None
        if folder is None:
            return False
        hint = recovery_hint(self.out)
        tensors, saved = read_checkpoint(folder, hint)
        problems = resume_differences(saved, self.trainable.checkpoint_config(), self.config.to_dict())
        if problems:
            raise ValueError(f"cannot resume from {folder}: the run's settings differ from the checkpoint's "
                             "(use another out_dir or resume=False):\n  " + "\n  ".join(problems))
        self.trainable.load_state_dict(tensors)
        load_optimizer(self.optimizer, folder)
        loop = read_json(folder / LOOP_FILE)
        self.step = loop["step"]
        self.best_loss = math.inf if loop["best_loss"] is None else loop["best_loss"]
        self.best_step, self.best_metrics = loop["best_step"], loop["best_metrics"]
        self.bad_validations = loop["bad_validations"]
        if self.best_step is not None:
            if not (self.out / "best").exists() and not (self.out / "best.old").exists():
                raise ValueError(f"{self.out / 'best'} is missing, although {folder / LOOP_FILE} records the best "
                                 f"state at step {self.best_step}. {hint}")
            self.best_state, _ = read_checkpoint(self.out / "best", hint)
        set_rng_states(folder)
        if self.main:
            truncate_log(self.out, self.step)
        distributed.barrier()
        logger.info("resumed from %s at step %d", folder, self.step)
        return True

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config = self.config
        if self.out is not None and self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        resumed = config.resume and self._resume()
        if not resumed:
            torch.manual_seed(config.seed + self.rank)
            if self.out is not None and self.main:
                set_aside_earlier_run(self.out)  # a fresh run starts a fresh log; the old one is kept
            distributed.barrier()
        stopped_early = False
        if self.val_episodes and config.val_at_start and self.step == 0:
            stopped_early = self._validation_round()
        bar = counter(total=config.max_steps, initial=self.step, desc="train", enabled=config.progress and self.main,
                      unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        try:
            while self.step < config.max_steps and not stopped_early:
                record = self._train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if self.step % config.log_every == 0:
                    self._log({"kind": "train", "step": self.step, **record,
                               "elapsed_s": round(time.perf_counter() - started, 3)})
                if self.val_episodes and self.step % config.val_every == 0:
                    stopped_early = self._validation_round()
                    self._save_latest()
        finally:
            bar.close()
        if not (self.val_episodes and self.step % config.val_every == 0):
            if self.val_episodes and not stopped_early:
                self._validation_round()  # the last steps deserve a chance to be the best
            self._save_latest()
        if config.restore_best and self.best_state is not None:
            self.trainable.load_state_dict(self.best_state)
        distributed.barrier()
        return TrainResult(self.step, self.best_step, self.best_metrics, stopped_early,
                           str(self.out) if self.out is not None else None)

    def _validation_round(self) -> bool:
        """Validate, keep a new best, and say whether patience ran out."""
        metrics = self._validate()
        self._log({"kind": "val", "step": self.step, **metrics})
        if self.main:
            logger.info("step %d validation: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        key = self.config.early_stop_key
        if key not in metrics:
            raise ValueError(f"early_stop_key {key!r} is not a validation metric; they are {sorted(metrics)}")
        if metrics[key] < self.best_loss:
            self.best_loss, self.best_step, self.best_metrics = metrics[key], self.step, metrics
            self.bad_validations = 0
            self._save_best(metrics)
            return False
        self.bad_validations += 1
        if self.config.patience is not None and self.bad_validations >= self.config.patience:
            if self.main:
                logger.info("stopping early at step %d: no better validation %s in %d validations",
                            self.step, key, self.bad_validations)
            return True
        return False


def train(trainable: Trainable, train_requests: Sequence[EditRequest], val_requests: Sequence[EditRequest] = (),
          config: Optional[TrainConfig] = None) -> TrainResult:
    """Train ``trainable`` on episodes of ``train_requests``; validate on ``val_requests``.

    Works the same in one process and under ``torchrun`` (call
    :func:`sss.distributed.init_from_env` first). At the end the trainable holds its best
    validated state (``restore_best``), or its last state when there was no validation.
    """
    return _Trainer(trainable, list(train_requests), list(val_requests), config or TrainConfig()).run()
