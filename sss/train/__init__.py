"""The one training loop that the trainable editors (MEND, SERAC) share.

Contract
--------
An editor that wants to be trained implements :class:`Trainable` and calls
``train(trainable, train_requests, val_requests, TrainConfig(...))``:

* ``trainable_module() -> nn.Module`` — the module that owns every trained parameter (and
  nothing else that requires grad). Under ``torchrun`` the loop wraps it in
  ``DistributedDataParallel``; the base model must *not* be one of its submodules.
* ``param_groups() -> list[dict]`` — Adam's groups, each ``{"name": str, "params": [...],
  "lr": float}``; ``TrainConfig.lr`` may override a group's lr by name.
* ``training_loss(episode) -> (loss, logs)`` — the scalar loss of one :class:`Episode` and a
  dict of floats to log. It runs *inside* the DDP module's forward, so gradients are averaged
  across ranks. The loop scales it for gradient accumulation; do not.
* ``validation_metrics(episode) -> dict`` — floats, including ``"edit_loss"`` (early stopping
  watches it by default, ``TrainConfig.early_stop_key`` another; lower is better). Called
  with grad enabled (editors like MEND need an inner gradient); it must not change any
  trained state.
* ``state_dict() -> dict[str, Tensor]`` / ``load_state_dict(state)`` — everything that defines the
  trained editor (parameters and buffers such as running statistics).
* ``checkpoint_config() -> dict`` — JSON: the base model's name and every hyper-parameter.
  Resuming into a trainable whose config differs is refused, naming the keys that differ.
* optional attribute ``find_unused_parameters = True`` when some trained parameters may get no
  gradient in an episode (passed to DDP).
* optional ``after_optimizer_step(all_reduce_sum)`` — called once after every optimizer step
  with a function that sums a tensor over all ranks (the identity in one process); MEND merges
  the running statistics gathered during the step with it, so every rank stays identical.

Episodes
--------
An :class:`Episode` is one training example for an editor: ``requests`` edited together (its
rephrasings ride on each request), and ``locality`` — one out-of-scope probe per request: the
request's own locality probe when it has one (cycling through them from epoch to epoch), else a
*different* training request's prompt with its answer. Episodes come from a seeded permutation
per epoch, so episode ``k`` of a run is a pure function of ``(requests, seed, k)``: resuming needs
only the count of episodes consumed.

One optimizer step consumes ``episodes_per_step`` episodes in total (the global batch). Under
``torchrun --nproc_per_node=N`` each rank takes every N-th of them and accumulates gradients over
its share (one forward/backward per episode); DDP averages across ranks, so N processes give
the same update as one (up to float summation order). ``episodes_per_step`` must be a multiple
of the world size.

Files (``out_dir``; only rank 0 writes)
-------------------------------------
* ``train_log.jsonl`` — one JSON object per logged step (``"kind": "train"``) and per validation
  (``"kind": "val"``).
* ``best/`` — ``weights.safetensors`` (the trainable's state) + ``config.json`` (its
  ``checkpoint_config()``, the TrainConfig, step and validation metrics), on every new best.
* ``latest/`` — the same plus ``optimizer.safetensors``/``optimizer.json`` (Adam's state),
  ``rng.safetensors`` (every rank's torch RNG) and ``loop.json`` (step, episodes consumed,
  early-stopping state), written after every validation and at the end. With
  ``resume=True`` a new run continues from it exactly; the log is cut back to that step.
* ``progress.json`` — the step of the last ``latest/``, so that a lost ``latest/`` is noticed.
Every file is written atomically and each checkpoint folder carries ``manifest.json`` (each file's
size and SHA-256, written last), verified whenever it is read. A missing or damaged ``latest/``
stops a rerun with an error naming the file; ``resume=False`` starts again from step 0 and moves
the earlier files to ``previous-N/`` (see :mod:`sss.train.run_folder`; docs/guarantees.md).
Nothing is pickled.

Modules: ``config`` (TrainConfig, Episode, the Trainable protocol), ``episodes`` (which requests
each episode holds), ``checkpoint`` (the files, and reading an editor's checkpoint back),
``collective`` (what ranks share), ``run_folder`` (resume, start afresh, or stop), ``loop`` (the loop). The command ``sss train EDITOR`` is
:mod:`sss.cli.train`.
"""
from .checkpoint import (CONFIG_FILE, LOG_FILE, WEIGHTS_FILE, checkpoint_editor, load_tensors, read_checkpoint,
                         read_editor_checkpoint, refuse_mismatches, resolve_checkpoint, shape_mismatches, shapes,
                         verify_checkpoint, write_checkpoint, write_editor_checkpoint)
from .config import Episode, Trainable, TrainConfig, TrainResult
from .episodes import EpisodeStream
from .loop import train
from .run_folder import checkpoint_to_resume

__all__ = ["CONFIG_FILE", "LOG_FILE", "WEIGHTS_FILE", "Episode", "EpisodeStream", "Trainable", "TrainConfig",
           "TrainResult", "checkpoint_editor", "checkpoint_to_resume", "load_tensors", "read_checkpoint", "read_editor_checkpoint", "refuse_mismatches",
           "resolve_checkpoint", "shape_mismatches", "shapes", "train", "verify_checkpoint", "write_checkpoint", "write_editor_checkpoint"]
