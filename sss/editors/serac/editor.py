"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") behind sss's Editor interface.

The base model is never changed. ``edit(requests)`` appends the requests to an explicit
:class:`EditMemory` and returns a handle that removes exactly those entries again;
``editor.model`` is the :class:`RoutedModel` that evaluation uses: the scope classifier decides
per input whether a stored edit applies, and if so the counterfactual model (by default a copy of
the base model) answers with the edit's text in front of the input.

Training (``fit``) runs the shared loop of :mod:`sss.train`; SERAC implements its ``Trainable``
protocol here and takes its losses and validation accuracy from :mod:`.objective`. With ``regularizer=SSSRegularizer()``
the counterfactual model's objective becomes the paper's Eq. 10.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...data import EditRequest
from ...losses import regularizer_from_description
from ...train import read_editor_checkpoint, refuse_mismatches, shape_mismatches, shapes, write_editor_checkpoint
from ..core import EditHandle, Editor, forget_edits, register_editor
from . import objective
from .classifier import ScopeClassifier, build_classifier
from .config import SERACConfig
from .memory import EditMemory
from .routed import RoutedModel

logger = logging.getLogger(__name__)

class MemoryEditHandle(EditHandle):
    """One SERAC edit: the memory entries it added. ``restore()`` removes exactly those.

    Handles are keyed by the memory (the state they change), so edits of one memory are undone
    newest first; ``handle.model`` is therefore the memory, and ``handle.entry_ids`` its entries.
    """

    def __init__(self, memory: EditMemory, entry_ids: List[int], requests, editor: str):
        super().__init__(memory, requests, editor, {"entry_ids": list(entry_ids)})
        self.memory = memory
        self.entry_ids = list(entry_ids)

    def _undo(self) -> None:
        self.memory.remove(self.entry_ids)

    def _release(self) -> None:
        self.entry_ids = []  # rebound, not cleared: a session's merged handle may share the list

    def _absorb(self, later: "MemoryEditHandle") -> None:
        self.entry_ids = self.entry_ids + later.entry_ids


class _Trained(nn.Module):
    """The modules SERAC trains, in one tree (what the training loop wraps; not the base model)."""

    def __init__(self, counterfactual: nn.Module, classifier: ScopeClassifier):
        super().__init__()
        self.counterfactual = counterfactual
        self.classifier = classifier


@register_editor("serac", display="SERAC")
class SERAC(Editor):
    """``SERAC(model, tokenizer, config=None, *, scope_classifier=None, counterfactual_model=None,
    model_name=None, regularizer=None, progress=True, **overrides)``.

    ``model_name`` is recorded in checkpoints (default: the model's ``name_or_path``).
    ``scope_classifier``: a ready :class:`ScopeClassifier` (default: built as the config's
    ``classifier`` and ``encoder`` say); ``counterfactual_model``: a ready causal LM sharing the
    base model's tokenizer (default: as the config's ``counterfactual`` says, i.e. a copy of the
    base model).
    """

    config_class = SERACConfig
    study_options = {"smoke": {"train_encoder": False}}
    # Every metric validation may report (TrainConfig.early_stop_key is checked against them early).
    validation_keys = ("cf_edit_nll", "cf_loss_ori", "cls_loss", "edit_loss", "generality", "loc_kl", "locality",
                       "reliability", "scope_acc", "scope_in_acc", "scope_out_acc")
    # Some encoder/LM parameters (e.g. position embeddings past the longest sequence) may get no
    # gradient in an episode; DDP must not wait for them.
    find_unused_parameters = True

    def __init__(self, model, tokenizer, config: Optional[SERACConfig] = None, *,
                 scope_classifier: Optional[ScopeClassifier] = None,
                 counterfactual_model: Optional[nn.Module] = None, model_name: Optional[str] = None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        self.model_name = model_name or getattr(model.config, "name_or_path", None) or model.config.model_type
        classifier = scope_classifier
        if classifier is None:
            classifier = build_classifier(self.config.classifier, self.config.encoder,
                                          max_length=self.config.encoder_max_length)
        if not isinstance(classifier, ScopeClassifier):
            raise ValueError(f"scope_classifier must be a ScopeClassifier, got {type(classifier).__name__}")
        self.classifier = classifier.to(self.device).eval()
        self.counterfactual = self._counterfactual(counterfactual_model).eval()
        for param in self.classifier.encoder_parameters():
            param.requires_grad_(self.config.train_encoder)
        self.memory = EditMemory()
        self._routed = RoutedModel(model, self.counterfactual, self.classifier, self.memory, tokenizer,
                                   threshold=self.config.threshold, separator=self.config.separator)
        self._trained = _Trained(self.counterfactual, self.classifier)

    def _counterfactual(self, given: Optional[nn.Module]) -> nn.Module:
        if given is None and self.config.counterfactual is None:
            given = copy.deepcopy(self.base_model)
        elif given is None:
            from ...models import load_model

            given, _ = load_model(self.config.counterfactual, dtype=next(self.base_model.parameters()).dtype,
                                  device=self.device)
        if given is self.base_model:
            raise ValueError("the counterfactual model must be a separate model (training would change the base)")
        base_vocab = self.base_model.get_input_embeddings().num_embeddings
        cf_vocab = given.get_input_embeddings().num_embeddings
        if cf_vocab != base_vocab:
            raise ValueError(f"the counterfactual model has a vocabulary of {cf_vocab} tokens but the base model "
                             f"{base_vocab}: they must share one tokenizer")
        trained = set(_trained_names(given, self.config.cf_layers))
        for name, param in given.named_parameters():
            param.requires_grad_(name in trained)
        return given

    # -- editing -----------------------------------------------------------------------------------

    @property
    def model(self) -> RoutedModel:
        """The edited system (a causal-LM-like wrapper); the base model stays untouched."""
        self._routed.threshold = self.config.threshold
        self._routed.separator = self.config.separator
        return self._routed

    def undo_point(self):
        """An interrupted edit puts the memory back as it was (entries, ids, cached keys)."""
        return self.memory.restorer()

    def _apply(self, requests: List[EditRequest]) -> MemoryEditHandle:
        ids = self.memory.add(requests)
        # Encode the new entries now, so an edit's cost is paid at edit time, not by the next query.
        self.memory.keys_for(self.classifier)
        return MemoryEditHandle(self.memory, ids, requests, self.name)

    def save_memory(self, folder: Union[str, Path]) -> Path:
        return self.memory.save(folder, self.classifier)

    def load_memory(self, folder: Union[str, Path]) -> EditMemory:
        """Replace the memory with a saved one (edits made before are dropped; their handles are void)."""
        loaded = EditMemory.load(folder, self.classifier)
        forget_edits(self.memory)  # their entries are gone; restoring them would remove nothing of theirs
        self.memory.__dict__.update(loaded.__dict__)  # keep the object the routed model refers to
        return self.memory

    # -- training (the sss.train Trainable protocol) ------------------------------------------------

    def trainable_module(self) -> nn.Module:
        return self._trained

    def param_groups(self) -> List[dict]:
        groups = [{"name": "counterfactual", "params": [p for p in self.counterfactual.parameters() if p.requires_grad],
                   "lr": self.config.lr},
                  {"name": "classifier_head", "params": self.classifier.head_parameters(),
                   "lr": self.config.head_lr}]
        if self.config.train_encoder:
            groups.append({"name": "classifier_encoder", "params": self.classifier.encoder_parameters(),
                           "lr": self.config.cls_lr})
        return groups

    def training_loss(self, episode) -> Tuple[torch.Tensor, Dict[str, float]]:
        cls_loss, logits, examples = objective.classifier_loss(self.classifier, episode.requests, episode.locality)
        batches = objective.counterfactual_batches(self.tokenizer, self.counterfactual, episode.requests,
                                                   episode.locality, self.config.separator)
        cf_loss, logs, _ = objective.counterfactual_loss(self.counterfactual, self.base_model, batches,
                                                         c_e=self.config.c_e, c_loc=self.config.c_loc,
                                                         regularizer=self.regularizer)
        logs = logs | {"cls_loss": float(cls_loss.detach())}
        logs |= objective.scope_metrics(logits.detach(), examples, self.config.threshold)
        return self.config.c_cls * cls_loss + cf_loss, logs

    @torch.no_grad()
    def validation_metrics(self, episode) -> Dict[str, float]:
        """Losses and the routed system's accuracy on one episode (its edits are the memory).

        ``edit_loss`` (what early stopping watches) is the unregularised objective:
        ``c_e * L_e + c_loc * L_loc + c_cls * L_cls``. ``reliability``/``generality`` are the routed
        system's teacher-forced token accuracy on the edit prompts / rephrasings, ``locality`` its
        argmax agreement with the base model on the locality inputs' answers.
        """
        cls_loss, logits, examples = objective.classifier_loss(self.classifier, episode.requests, episode.locality)
        metrics = objective.scope_metrics(logits, examples, self.config.threshold)
        batches = objective.counterfactual_batches(self.tokenizer, self.counterfactual, episode.requests,
                                                   episode.locality, self.config.separator)
        cf_loss, logs, cf_logits = objective.counterfactual_loss(self.counterfactual, self.base_model, batches,
                                                                 c_e=self.config.c_e, c_loc=self.config.c_loc)
        metrics |= logs | {"cls_loss": float(cls_loss), "edit_loss": float(cf_loss + self.config.c_cls * cls_loss)}
        metrics |= objective.system_accuracy(self, episode, logits, examples, batches, cf_logits)
        return metrics

    def fit(self, train_requests: Sequence[EditRequest], val_requests: Sequence[EditRequest] = (),
            config=None):
        """Train the classifier and the counterfactual model with :func:`sss.train.train`."""
        from ...train import TrainConfig, train

        config = config or TrainConfig()
        if len(self.memory):
            logger.warning("training with %d edits in memory: their classifier keys will be recomputed", len(self.memory))
        try:
            result = train(self, train_requests, val_requests, config)
        finally:
            self.classifier.mark_changed()
            self._trained.eval()
        return result

    def _saved_parameters(self) -> Dict[str, nn.Parameter]:
        """What a checkpoint holds: the counterfactual model's trained part and the classifier.

        Frozen counterfactual weights (``cf_layers``) are the base model's (or the configured
        model's) and are not saved; named_parameters lists a tied weight once (safetensors
        refuses shared tensors)."""
        trained = set(_trained_names(self.counterfactual, self.config.cf_layers))
        saved = {f"counterfactual.{n}": p for n, p in self.counterfactual.named_parameters() if n in trained}
        saved.update({f"classifier.{n}": p for n, p in self.classifier.named_parameters()})
        return saved

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: param.detach() for name, param in self._saved_parameters().items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        refuse_mismatches(shape_mismatches(shapes(state), shapes(self.state_dict()), present_as="SERAC"),
                          "the SERAC weights do not match this model")
        params = self._saved_parameters()
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        self.classifier.mark_changed()

    def checkpoint_config(self) -> dict:
        return {
            "editor": self.name,
            "base_model": self.model_name,
            "model_type": self.base_model.config.model_type,
            "vocab_size": self.base_model.get_input_embeddings().num_embeddings,
            "config": self.config.to_dict(),
            "classifier": type(self.classifier).__name__,
            "regularizer": None if self.regularizer is None else self.regularizer.describe(),
        }

    # -- files --------------------------------------------------------------------------------------

    def save(self, folder: Union[str, Path]) -> Path:
        """Write the trained weights (safetensors) and the config (JSON) into ``folder``."""
        return write_editor_checkpoint(folder, self.state_dict(), self.checkpoint_config())

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], model, tokenizer, **overrides) -> "SERAC":
        """A SERAC for ``model`` with the weights in ``path`` (a ``save`` folder or a training
        ``out_dir``, whose ``best/`` is used). Refused, with what differs, if it does not fit.

        The regularizer it was trained with is rebuilt (so reports say "w/ SSS"); SSS acts during
        training only, so it changes nothing about editing. ``overrides``: ``progress=``,
        ``regularizer=``, or config fields that do not affect the weights (e.g. ``threshold``)."""
        tensors, info, folder = read_editor_checkpoint(path)
        if info.get("editor") != cls.name:
            raise ValueError(f"{folder} is a {info.get('editor')!r} checkpoint, not a SERAC one")
        problems = []
        if info.get("model_type") != model.config.model_type:
            problems.append(f"architecture: checkpoint {info.get('model_type')!r}, model {model.config.model_type!r}")
        vocab = model.get_input_embeddings().num_embeddings
        if info.get("vocab_size") != vocab:
            problems.append(f"vocabulary: checkpoint {info.get('vocab_size')}, model {vocab}")
        refuse_mismatches(problems, f"the SERAC checkpoint {folder} does not fit this model")
        names = {f.name for f in dataclasses.fields(SERACConfig)}
        config = SERACConfig(**{k: v for k, v in info["config"].items() if k in names})
        if overrides.get("regularizer") is None:
            overrides["regularizer"] = regularizer_from_description(info.get("regularizer"))
        editor = cls(model, tokenizer, config, **{"model_name": info.get("base_model"), **overrides})
        editor.load_state_dict(tensors)
        return editor


def _trained_names(model: nn.Module, last_blocks: Optional[int]) -> List[str]:
    """Parameter names of ``model`` that SERAC trains: all, or its last blocks and final norm."""
    names = [name for name, _ in model.named_parameters()]
    if last_blocks is None:
        return names
    from ...models import layout_of, num_blocks

    layout = layout_of(model)
    total = num_blocks(model)
    if last_blocks > total:
        raise ValueError(f"cf_layers={last_blocks} but the counterfactual model has {total} blocks")
    prefixes = [f"{layout.blocks}.{i}." for i in range(total - last_blocks, total)] + [f"{layout.final_norm}."]
    return [name for name in names if name.startswith(tuple(prefixes))]
