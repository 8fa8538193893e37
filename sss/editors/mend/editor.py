"""MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022) as an editor: the method.

An edit (:meth:`MEND.edit`) is one forward/backward pass of the model on the requests (the
inner pass, :mod:`.hooks`), the transform of every edited layer's factors (:mod:`.network`),
and ``W ← W − η_l · Σ_t δ̃_t ũ_tᵀ`` for every edited weight ``l``. How the transform is trained
(the objective of Eq. 6 / Eq. 10 and ``fit``) is :mod:`.objective`; this module also reads and
writes MEND's checkpoints.

Defaults are MEND's GPT-2 XL settings: the MLP input and output matrices of the last three
blocks, rank 1920, one hidden layer, normalised inputs, step sizes initialised to 1e-4, Adam
with lr 1e-6 (networks) and 1e-4 (step sizes), ``c_e = 0.1``, ``c_loc = 1``. For Llama-family
models "MLP input" means both ``gate_proj`` and ``up_proj`` (each gets its own step size and
mode; they share a transform since their shapes agree).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...data import EditRequest, encode_pairs
from ...files import check_fingerprint, weights_fingerprint
from ...data.tokenize import PairBatch, context_length
from ...losses import regularizer_from_description
from ...models import is_conv1d, mlp_in_paths, mlp_out_path, num_blocks
from ...train import read_editor_checkpoint, refuse_mismatches, shape_mismatches, shapes, write_editor_checkpoint
from ..core import Editor, OuterLossConfig, WeightEditHandle, register_editor, snapshot
from ..core.config import block_list, require_bool, require_positive_integer, require_real
from .hooks import factor_operands, factor_product, layer_factors
from .network import MENDNetworks
from .objective import MENDTraining, eval_mode

logger = logging.getLogger(__name__)

WEIGHT_KINDS = ("mlp_in", "mlp_out")
FORMAT_VERSION = 1


@dataclass
class MENDConfig(OuterLossConfig):
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
    stats_requests: int = 50

    def __post_init__(self):
        super().__post_init__()
        if self.layers is not None:
            self.layers = block_list(self.layers, "MENDConfig.layers")
        if isinstance(self.weights, str) or not isinstance(self.weights, (list, tuple)):
            raise ValueError(f"MENDConfig.weights must be a list drawn from {list(WEIGHT_KINDS)}, got {self.weights!r}")
        self.weights = tuple(self.weights)
        unknown = sorted(set(self.weights) - set(WEIGHT_KINDS), key=str)
        if unknown or not self.weights:
            raise ValueError(f"MENDConfig.weights must be a non-empty subset of {WEIGHT_KINDS}, got {self.weights}")
        for name in ("rank", "stats_requests"):
            require_positive_integer(f"MENDConfig.{name}", getattr(self, name))
        require_positive_integer("MENDConfig.n_hidden", self.n_hidden, minimum=0)
        require_bool("MENDConfig.normalize", self.normalize)
        for name in ("lr", "lr_lr", "init_edit_lr"):
            require_real(f"MENDConfig.{name}", getattr(self, name), positive=True)


@register_editor("mend", display="MEND")
class MEND(MENDTraining, Editor):
    """``MEND(model, tokenizer, config=None, *, regularizer=None, model_name=None, progress=True, **overrides)``.

    ``model_name`` is recorded in checkpoints (default: the model's ``name_or_path``).
    Untrained, the networks are the identity: an edit is then a (normalised) gradient step.
    """

    config_class = MENDConfig
    requires_checkpoint = True  # untrained, an edit is a bare gradient step
    # Every metric validation may report (TrainConfig.early_stop_key is checked against them early).
    validation_keys = ("edit_loss", "loc_loss", "loss", "loss_ori", "penalty", "pre_reliability", "reliability",
                       "generality", "locality")
    study_options = {"smoke": {"rank": 8, "stats_requests": 4}, "cpu": {"init_edit_lr": 1e-5}}

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

    def _steps(self, batch: PairBatch, current: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``η_l · Σ_t δ̃_t ũ_tᵀ`` for every edited weight; differentiable in the networks' parameters.

        The sum over tokens is one matmul (:func:`factor_product`), and all weights that share a
        transform are transformed in one pass (:meth:`MENDNetworks.transform_all`).
        """
        transformed = self.networks.transform_all(layer_factors(self.base_model, current, batch))
        return {name: self.networks.edit_lr(name) * factor_product(u, delta, self.conv1d[name])
                for name, (u, delta) in transformed.items()}

    def _new_weights(self, batch: PairBatch, current: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``W − η·∇̃W`` for every edited weight; differentiable in the networks' parameters."""
        return {name: current[name] - step for name, step in self._steps(batch, current).items()}

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        batch = self._encode([r.prompt for r in requests], [r.target_new for r in requests])
        params = dict(self.base_model.named_parameters())
        originals = snapshot(self.base_model, self.weight_names)
        with eval_mode(self.networks):
            current = {name: params[name].detach() for name in self.weight_names}
            with torch.no_grad():
                transformed = self.networks.transform_all(layer_factors(self.base_model, current, batch))
                # ``W − η Σ_t δ̃_t ũ_tᵀ`` in place as one ``addmm_``: no step matrix, no separate
                # scaling and subtraction passes over it (``_new_weights`` to float rounding).
                for name, (u, delta) in transformed.items():
                    params[name].addmm_(*factor_operands(u, delta, self.conv1d[name]),
                                        alpha=-float(self.networks.edit_lr(name)))
        return WeightEditHandle(self.base_model, originals, requests, self.name,
                                {"edited_weights": list(self.weight_names)})

    # -- files ----------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self.networks.state_dict())

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        own = self.networks.state_dict()
        refuse_mismatches(shape_mismatches(shapes(state), shapes(own), present_as="editor"),
                          "the MEND checkpoint does not fit this editor")
        self.networks.load_state_dict({k: v.to(own[k].device) for k, v in state.items()})

    def checkpoint_config(self) -> dict:
        params = dict(self.base_model.named_parameters())
        return {
            "editor": self.name,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.model_name, "model_type": self.base_model.config.model_type,
                      "num_blocks": num_blocks(self.base_model),
                      "edited_weights": {n: list(params[n].shape) for n in self.weight_names},
                      # which base weights it was trained on: a same-shape model with others is refused
                      "base_fingerprint": weights_fingerprint(self.base_model)},
            "config": self.config.to_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.describe(),
        }

    def save(self, path: Union[str, Path]) -> Path:
        """Write the trained editor: ``weights.safetensors`` + ``config.json`` in folder ``path``."""
        return write_editor_checkpoint(path, self.state_dict(), self.checkpoint_config())

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], model: nn.Module, tokenizer, **overrides) -> "MEND":
        """A MEND editor for ``model`` from a checkpoint folder (from :meth:`save`, or a training run's
        ``out_dir`` or its ``best/``). ``overrides``: ``progress=``, ``regularizer=`` or config fields.

        Refused with the list of differences when the checkpoint was trained on another
        architecture or on weights of other names or shapes.
        """
        tensors, saved, path = read_editor_checkpoint(path)
        if saved.get("editor") != cls.name:
            raise ValueError(f"{path} holds a {saved.get('editor')!r} checkpoint, not a MEND one")
        recorded = saved["model"]
        problems = []
        model_type = getattr(model.config, "model_type", None)
        if recorded["model_type"] != model_type:
            problems.append(f"architecture: checkpoint {recorded['model_type']!r}, model {model_type!r}")
        if recorded["num_blocks"] != num_blocks(model):
            problems.append(f"blocks: checkpoint {recorded['num_blocks']}, model {num_blocks(model)}")
        problems += shape_mismatches(recorded["edited_weights"], shapes(dict(model.named_parameters())),
                                     complete=False)
        refuse_mismatches(problems, f"the MEND checkpoint {path} does not match this model")
        check_fingerprint(recorded.get("base_fingerprint"), weights_fingerprint(model), f"the MEND checkpoint {path}")
        config_fields = dict(saved["config"])
        config_fields["layers"] = tuple(config_fields["layers"])
        config_fields["weights"] = tuple(config_fields["weights"])
        arguments = {"regularizer": regularizer_from_description(saved["regularizer"]),
                     "model_name": recorded["name"], "progress": True}
        arguments.update({k: overrides.pop(k) for k in list(overrides) if k in arguments})
        editor = cls(model, tokenizer, MENDConfig(**config_fields), **arguments, **overrides)
        if editor.weight_names != list(recorded["edited_weights"]):
            raise ValueError(f"the MEND checkpoint {path} edits {list(recorded['edited_weights'])}, but this model "
                             f"resolves its config to {editor.weight_names}")
        editor.load_state_dict(tensors)
        return editor
