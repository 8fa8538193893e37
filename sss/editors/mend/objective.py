"""How MEND is trained: the outer objective of one episode (Eq. 6 / Eq. 10) and ``fit``.

Training (:meth:`MENDTraining.fit`, through :func:`sss.train.train`) makes the edit of
:mod:`.editor` differentiably: the edited weights are passed to ``torch.func.functional_call``
and the outer loss ``L_ori = c_e·L_e + c_loc·L_loc`` flows back through them into the networks
and step sizes. ``L_e`` is the mean target NLL of the edit prompts and their rephrasings after
the edit, ``L_loc`` the KL from the unedited to the edited model on the locality inputs (every
real token of ``prompt + answer``). With a regularizer, ``L_all = (1 − C)·L_ori + C·penalty``,
the penalty taken on the edited model's forward pass of the edit prompts with
``create_graph=True``: a second-order term through the edit into the networks.

:class:`MENDTraining` is the half of :class:`~sss.editors.mend.MEND` that implements the
``sss.train.Trainable`` protocol (its checkpoint side, ``state_dict`` and
``checkpoint_config``, sits with the files in :mod:`.editor`).
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call

from ...data import EditRequest
from ...eval.metrics import argmax_agreement, token_accuracy
from ...losses import locality_kl, target_nll
from ...models import second_order_attention
from ...train import Episode, TrainConfig, TrainResult, train
from ..core.grad_flags import train_only
from ...losses.head import target_tail
from .hooks import layer_factors


class MENDTraining:
    """The training side of MEND (mixed into the editor; uses its networks, weights and encoder)."""

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
                out["pre_reliability"] = token_accuracy(self.base_model(**edit_batch.model_inputs).logits,
                                                          edit_batch).mean()

        edit_batch_inputs = edit_batch.model_inputs
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
            else:  # the LM head only where the targets are predicted (the SSS hook needs every position)
                keep, edit_batch = target_tail(edit_batch)
                edit_logits = call(**edit_batch_inputs, logits_to_keep=keep).logits
                edit_nll = target_nll(edit_logits, edit_batch)
            nlls = [edit_nll]
            if rephrasings:
                rephrase_batch = self._encode(*zip(*rephrasings))
                keep, rephrase_tail = target_tail(rephrase_batch)
                rephrase_logits = call(**rephrase_batch.model_inputs, logits_to_keep=keep).logits
                rephrase_batch = rephrase_tail
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
                out["reliability"] = token_accuracy(edit_logits, edit_batch).mean()
                if rephrasings:
                    out["generality"] = token_accuracy(rephrase_logits, rephrase_batch).mean()
                out["locality"] = argmax_agreement(pre_loc, post_loc, loc_batch).mean()
        return out

    def training_loss(self, episode: Episode) -> Tuple[torch.Tensor, Dict[str, float]]:
        out = self.episode_losses(episode, create_graph=True)
        logs = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
        return out["loss"], logs

    def validation_metrics(self, episode: Episode) -> Dict[str, float]:
        with eval_mode(self.networks):
            out = self.episode_losses(episode, create_graph=False, measure=True)
        return {k: float(v.detach()) for k, v in out.items()}

    def after_optimizer_step(self, all_reduce_sum) -> None:
        for norm in self.networks.norms():
            norm.commit(all_reduce_sum)

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
            factors = layer_factors(self.base_model, current, batch)
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
        with train_only(self.base_model):
            return train(self, train_requests, val_requests, config)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
