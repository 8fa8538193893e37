"""MEND as an editor: the edit, the training objective (Eq. 6 / Eq. 10) and checkpoints.

An edit (:meth:`MEND.edit`) is one forward/backward pass of the model on the requests (the
inner pass, :mod:`.hooks`), the transform of every edited layer's factors (:mod:`.network`),
and ``W ← W − η_l · Σ_t δ̃_t ũ_tᵀ`` for every edited weight ``l``.

Training (:meth:`MEND.fit`, through :func:`sss.train.train`) makes the same edit
differentiably: the edited weights are passed to ``torch.func.functional_call`` and the outer
loss ``L_ori = c_e·L_e + c_loc·L_loc`` flows back through them into the networks and step sizes.
``L_e`` is the mean target NLL of the edit prompts and their rephrasings after the edit,
``L_loc`` the KL from the unedited to the edited model on the locality inputs (every real
token of ``prompt + answer``). With a regularizer, ``L_all = (1 − C)·L_ori + C·penalty``,
the penalty taken on the edited model's forward pass of the edit prompts with
``create_graph=True``: a second-order term through the edit into the networks.

Defaults are MEND's GPT-2 XL settings: the MLP input and output matrices of the last three
blocks, rank 1920, one hidden layer, normalised inputs, step sizes initialised to 1e-4, Adam
with lr 1e-6 (networks) and 1e-4 (step sizes), ``c_e = 0.1``, ``c_loc = 1``. For Llama-family
models "MLP input" means both ``gate_proj`` and ``up_proj`` (each gets its own step size and
mode; they share a transform since their shapes agree).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.func import functional_call

from ...data import EditRequest, encode_pairs
from ...data.tokenize import PairBatch, context_length
from ...losses import SSSRegularizer, SparsityRegularizer, locality_kl, target_nll
from ...models import is_conv1d, mlp_in_paths, mlp_out_path, num_blocks, second_order_attention
from ...train import WEIGHTS_FILE, Episode, TrainConfig, TrainResult, read_checkpoint, train, write_checkpoint
from ..base import Editor, EditorConfig, WeightEditHandle, register_editor, snapshot
from .hooks import factor_product, layer_factors
from .network import MENDNetworks

logger = logging.getLogger(__name__)

WEIGHT_KINDS = ("mlp_in", "mlp_out")
FORMAT_VERSION = 1


@dataclass
class MENDConfig(EditorConfig):
    """MEND's hyper-parameters (MEND's GPT-2 XL defaults).

    ``layers``: blocks whose MLP weights are edited (negative counts from the end; None: the last
    three, or every block of a model with fewer). ``weights``: which MLP matrices.
    ``rank``: of each residual layer, capped at the transform's width ``d_in + d_out``.
    ``stats_requests``: how many training requests seed the input normalisation before the
    first step.
    """

    layers: Optional[Tuple[int, ...]] = None
    weights: Tuple[str, ...] = WEIGHT_KINDS
    rank: int = 1920
    n_hidden: int = 1
    normalize: bool = True
    init_edit_lr: float = 1e-4
    lr: float = 1e-6
    lr_lr: float = 1e-4
    c_e: float = 0.1
    c_loc: float = 1.0
    stats_requests: int = 50

    def __post_init__(self):
        if self.layers is not None:
            self.layers = tuple(int(layer) for layer in self.layers)
            if not self.layers:
                raise ValueError("MENDConfig.layers must name at least one block (or be None)")
        self.weights = tuple(self.weights)
        unknown = sorted(set(self.weights) - set(WEIGHT_KINDS))
        if unknown or not self.weights:
            raise ValueError(f"MENDConfig.weights must be a non-empty subset of {WEIGHT_KINDS}, got {self.weights}")
        for name in ("rank", "stats_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"MENDConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_hidden < 0:
            raise ValueError(f"MENDConfig.n_hidden must be >= 0, got {self.n_hidden}")
        for name in ("lr", "lr_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MENDConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("c_e", "c_loc"):
            if getattr(self, name) < 0:
                raise ValueError(f"MENDConfig.{name} must be >= 0, got {getattr(self, name)}")


@register_editor("mend")
class MEND(Editor):
    """``MEND(model, tokenizer, config=None, *, regularizer=None, model_name=None, progress=True, **overrides)``.

    ``model_name`` is recorded in checkpoints (default: the model's ``name_or_path``).
    Untrained, the networks are the identity: an edit is then a (normalised) gradient step.
    """

    config_class = MENDConfig

    def __init__(self, model, tokenizer, config: Optional[MENDConfig] = None, *, model_name: Optional[str] = None,
                 **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        self.model_name = model_name or getattr(model, "name_or_path", None) or None
        if self.config.layers is None:
            self.config.layers = tuple(range(-min(3, num_blocks(model)), 0))
        self.weight_names = self._edited_weight_names()
        self.conv1d = {name: is_conv1d(model.get_submodule(name.rsplit(".", 1)[0])) for name in self.weight_names}
        params = dict(model.named_parameters())
        shapes = []
        for name in self.weight_names:
            rows, cols = params[name].shape
            in_dim, out_dim = (rows, cols) if self.conv1d[name] else (cols, rows)
            shapes.append((name, in_dim, out_dim))
        reference = params[self.weight_names[0]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the networks start the same on every rank and in every run
            self.networks = MENDNetworks(shapes, rank=self.config.rank, n_hidden=self.config.n_hidden,
                                         normalize=self.config.normalize, init_edit_lr=self.config.init_edit_lr)
        self.networks.to(device=reference.device, dtype=reference.dtype)
        self.networks.eval()
        self._max_length = context_length(tokenizer, model)

    def _edited_weight_names(self) -> List[str]:
        params = dict(self.base_model.named_parameters())
        names = []
        for layer in self.config.layers:
            paths = []
            if "mlp_in" in self.config.weights:
                paths += mlp_in_paths(self.base_model, layer)
            if "mlp_out" in self.config.weights:
                paths.append(mlp_out_path(self.base_model, layer))
            for path in paths:
                name = f"{path}.weight"
                if name not in params or params[name].dim() != 2:
                    raise ValueError(f"MEND edits 2-d weights; {name} is not one in this model")
                if name not in names:
                    names.append(name)
        return names

    # -- the edit -------------------------------------------------------------------------------

    def _encode(self, prompts: Sequence[str], targets: Sequence[str]) -> PairBatch:
        return encode_pairs(self.tokenizer, list(prompts), list(targets), max_length=self._max_length,
                            device=self.device)

    def _new_weights(self, batch: PairBatch, current: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``W − η·∇̃W`` for every edited weight; differentiable in the networks' parameters."""
        factors = layer_factors(self.base_model, current, batch, lambda logits, b: target_nll(logits, b).mean())
        new = {}
        for name, (u, delta) in factors.items():
            u_t, delta_t = self.networks.transform(name, u, delta)
            pseudo_grad = factor_product(u_t, delta_t, self.conv1d[name])
            new[name] = current[name] - self.networks.edit_lr(name) * pseudo_grad
        return new

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        batch = self._encode([r.prompt for r in requests], [r.target_new for r in requests])
        params = dict(self.base_model.named_parameters())
        originals = snapshot(self.base_model, self.weight_names)
        with _eval_mode(self.networks):
            current = {name: params[name].detach() for name in self.weight_names}
            with torch.no_grad():
                new = self._new_weights(batch, current)
                for name, value in new.items():
                    params[name].copy_(value)
        return WeightEditHandle(self.base_model, originals, requests, self.name,
                                {"edited_weights": list(self.weight_names)})

    # -- training (the sss.train.Trainable protocol) -------------------------------------------

    def trainable_module(self) -> nn.Module:
        return self.networks

    def param_groups(self) -> List[dict]:
        return [{"name": "network", "params": self.networks.network_parameters(), "lr": self.config.lr},
                {"name": "edit_lr", "params": [self.networks.edit_lrs], "lr": self.config.lr_lr}]

    def episode_losses(self, episode: Episode, *, create_graph: bool = True, measure: bool = False
                       ) -> Dict[str, torch.Tensor]:
        """Edit with the episode's requests (functionally) and compute the outer losses.

        Returns ``edit_loss``, ``loc_loss``, ``loss`` (what training minimises) and, with a
        regularizer, ``penalty`` and ``loss_ori``; with ``measure``, token accuracies
        ``reliability``/``generality`` after the edit, ``pre_reliability`` before it and
        ``locality`` (argmax agreement with the unedited model on the locality answers).
        ``create_graph=False`` builds no graph through the networks (validation).
        """
        requests = episode.requests
        edit_batch = self._encode([r.prompt for r in requests], [r.target_new for r in requests])
        rephrasings = [(p, r.target_new) for r in requests for p in r.rephrase_prompts]
        loc_batch = self._encode([p.prompt for p in episode.locality], [p.answer for p in episode.locality])
        params = dict(self.base_model.named_parameters())
        current = {name: params[name].detach() for name in self.weight_names}
        regularizer = self.regularizer
        out: Dict[str, torch.Tensor] = {}

        with torch.no_grad():
            pre_loc = self.base_model(**loc_batch.model_inputs).logits
            if measure:
                out["pre_reliability"] = _token_accuracy(self.base_model(**edit_batch.model_inputs).logits, edit_batch)

        with contextlib.nullcontext() if create_graph else torch.no_grad():
            new = self._new_weights(edit_batch, current)

        def call(**inputs):
            return functional_call(self.base_model, new, args=(), kwargs=inputs)

        grad_context = torch.enable_grad() if (create_graph or (measure and regularizer)) else torch.no_grad()
        attention = second_order_attention(self.base_model) if regularizer is not None else contextlib.nullcontext()
        with grad_context, attention:
            if regularizer is not None:
                edit_logits, edit_nll, penalty = regularizer.loss_and_penalty(self.base_model, edit_batch, call,
                                                                              create_graph=create_graph)
                out["penalty"] = penalty
            else:
                edit_logits = call(**edit_batch.model_inputs).logits
                edit_nll = target_nll(edit_logits, edit_batch)
            nlls = [edit_nll]
            if rephrasings:
                rephrase_batch = self._encode(*zip(*rephrasings))
                rephrase_logits = call(**rephrase_batch.model_inputs).logits
                nlls.append(target_nll(rephrase_logits, rephrase_batch))
            post_loc = call(**loc_batch.model_inputs).logits
            out["edit_loss"] = torch.cat(nlls).mean()
            out["loc_loss"] = locality_kl(pre_loc, post_loc, loc_batch.attention_mask.bool())
            loss = self.config.c_e * out["edit_loss"] + self.config.c_loc * out["loc_loss"]
            if regularizer is not None:
                out["loss_ori"] = loss
                loss = regularizer.combine(loss, out["penalty"])
            out["loss"] = loss
        if measure:
            with torch.no_grad():
                out["reliability"] = _token_accuracy(edit_logits, edit_batch)
                if rephrasings:
                    out["generality"] = _token_accuracy(rephrase_logits, rephrase_batch)
                out["locality"] = _argmax_agreement(pre_loc, post_loc, loc_batch)
        return out

    def training_loss(self, episode: Episode) -> Tuple[torch.Tensor, Dict[str, float]]:
        out = self.episode_losses(episode, create_graph=True)
        logs = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
        return out["loss"], logs

    def validation_metrics(self, episode: Episode) -> Dict[str, float]:
        with _eval_mode(self.networks):
            out = self.episode_losses(episode, create_graph=False, measure=True)
        return {k: float(v.detach()) for k, v in out.items()}

    def after_optimizer_step(self, all_reduce_sum) -> None:
        for norm in self.networks.norms():
            norm.commit(all_reduce_sum)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self.networks.state_dict())

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        own = self.networks.state_dict()
        problems = [f"{k}: checkpoint has it, the editor does not" for k in state if k not in own]
        problems += [f"{k}: missing from the checkpoint" for k in own if k not in state]
        problems += [f"{k}: checkpoint shape {tuple(state[k].shape)}, editor has {tuple(own[k].shape)}"
                     for k in own if k in state and state[k].shape != own[k].shape]
        if problems:
            raise ValueError("the MEND checkpoint does not fit this editor:\n  " + "\n  ".join(problems))
        self.networks.load_state_dict({k: v.to(own[k].device) for k, v in state.items()})

    def checkpoint_config(self) -> dict:
        params = dict(self.base_model.named_parameters())
        return {
            "editor": self.name,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.model_name, "model_type": self.base_model.config.model_type,
                      "num_blocks": num_blocks(self.base_model),
                      "edited_weights": {n: list(params[n].shape) for n in self.weight_names}},
            "config": self.config.to_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.describe(),
        }

    def init_statistics(self, requests: Sequence[EditRequest], batch_size: int = 8) -> None:
        """Seed the input normalisation with the factors of ``requests``' inner passes."""
        if not self.config.normalize:
            return
        if not requests:
            raise ValueError("init_statistics needs at least one request")
        params = dict(self.base_model.named_parameters())
        current = {name: params[name].detach() for name in self.weight_names}
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            batch = self._encode([r.prompt for r in chunk], [r.target_new for r in chunk])
            factors = layer_factors(self.base_model, current, batch, lambda logits, b: target_nll(logits, b).mean())
            for name, (u, delta) in factors.items():
                key, _ = self.networks.route[name]
                self.networks.transforms[key].norm.observe(torch.cat([u, delta], -1))
        for norm in self.networks.norms():
            norm.commit()

    def fit(self, train_requests: Sequence[EditRequest], val_requests: Sequence[EditRequest] = (),
            config: Optional[TrainConfig] = None) -> TrainResult:
        """Train the networks and step sizes with :func:`sss.train.train` (one process or torchrun).

        The base model is frozen during training and left unchanged; the input normalisation is
        first seeded from ``stats_requests`` training requests unless it already has statistics.
        """
        config = config or TrainConfig(progress=self.progress)
        if self.config.normalize and not all(n.ready for n in self.networks.norms()):
            self.init_statistics(list(train_requests)[:self.config.stats_requests])
        with _frozen(self.base_model):
            return train(self, train_requests, val_requests, config)

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        """Write the trained editor: ``weights.safetensors`` + ``config.json`` in folder ``path``."""
        return write_checkpoint(path, self.state_dict(), self.checkpoint_config())

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module, tokenizer, *, progress: bool = True) -> "MEND":
        """A MEND editor for ``model`` from a checkpoint folder (from :meth:`save`, or a training run's
        ``out_dir`` or its ``best/``).

        Refused with the list of differences when the checkpoint was trained on another
        architecture or on weights of other names or shapes.
        """
        path = Path(path)
        if not (path / WEIGHTS_FILE).exists() and (path / "best" / WEIGHTS_FILE).exists():
            path = path / "best"  # a training run's folder: its best checkpoint
        tensors, saved = read_checkpoint(path)
        if "trainable" in saved:  # a folder written by the training loop
            saved = saved["trainable"]
        if saved.get("editor") != cls.name:
            raise ValueError(f"{path} holds a {saved.get('editor')!r} checkpoint, not a MEND one")
        recorded = saved["model"]
        problems = []
        model_type = getattr(model.config, "model_type", None)
        if recorded["model_type"] != model_type:
            problems.append(f"architecture: checkpoint {recorded['model_type']!r}, model {model_type!r}")
        if recorded["num_blocks"] != num_blocks(model):
            problems.append(f"blocks: checkpoint {recorded['num_blocks']}, model {num_blocks(model)}")
        params = dict(model.named_parameters())
        for name, shape in recorded["edited_weights"].items():
            if name not in params:
                problems.append(f"{name}: not a parameter of this model")
            elif list(params[name].shape) != shape:
                problems.append(f"{name}: checkpoint shape {tuple(shape)}, model {tuple(params[name].shape)}")
        if problems:
            raise ValueError(f"the MEND checkpoint {path} does not match this model:\n  " + "\n  ".join(problems))
        config_fields = dict(saved["config"])
        config_fields["layers"] = tuple(config_fields["layers"])
        config_fields["weights"] = tuple(config_fields["weights"])
        editor = cls(model, tokenizer, MENDConfig(**config_fields), regularizer=_regularizer_from(saved["regularizer"]),
                     model_name=recorded["name"], progress=progress)
        if editor.weight_names != list(recorded["edited_weights"]):
            raise ValueError(f"the MEND checkpoint {path} edits {list(recorded['edited_weights'])}, but this model "
                             f"resolves its config to {editor.weight_names}")
        editor.load_state_dict(tensors)
        return editor


def _regularizer_from(description: Optional[dict]) -> Optional[SparsityRegularizer]:
    """The regularizer a checkpoint was trained with (kept so reports say "w/ SSS")."""
    if description is None:
        return None
    if description.get("name") == "SSSRegularizer":
        options = {k: v for k, v in description.items() if k != "name"}
        return SSSRegularizer(**options)
    logger.warning("the checkpoint was trained with %s, which sss cannot rebuild; loading without it", description)
    return None


def _token_accuracy(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Teacher-forced argmax accuracy of the target tokens, averaged per example then over the batch."""
    predicted = logits[:, :-1].argmax(-1)
    mask = batch.target_mask[:, 1:]
    hits = ((predicted == batch.labels[:, 1:]) & mask).sum(-1).to(torch.float64)
    return (hits / mask.sum(-1)).mean()


def _argmax_agreement(pre: torch.Tensor, post: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """How often the edited model's argmax equals the unedited one's on the answer positions."""
    mask = batch.target_mask[:, 1:]
    same = (pre[:, :-1].argmax(-1) == post[:, :-1].argmax(-1)) & mask
    return (same.sum(-1).to(torch.float64) / mask.sum(-1)).mean()


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """No base-model parameter requires grad while training (the outer backward skips them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
