"""SERAC's counterfactual losses with the LM head on the read columns only equal the full-logit ones.

The reference here is the straightforward computation (full logits at every position, the edit
prefix cut off the locality logits afterwards); the optimised one is
``sss.editors.serac.objective.counterfactual_loss``. Both run in float64 on the same batches and
must give the same loss and the same gradient for every parameter.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from sss import EditRequest, LocalityProbe, SSSRegularizer, load_model
from sss.editors.serac import objective
from sss.losses.head import logits_at
from sss.losses import locality_kl, target_nll
from sss.losses.head import target_window
from sss.models import backbone, second_order_attention

REQUESTS = (EditRequest("The capital of France is", "Rome", rephrase_prompts=("France's capital city is",
                                                                              "The French capital is called")),
            EditRequest("The mother tongue of Danielle Darrieux is", "English Creole",
                        rephrase_prompts=("Danielle Darrieux speaks",)),
            EditRequest("Albert Einstein was born in", "Spain"))
LOCALITY = (LocalityProbe("Who wrote Hamlet?", "William Shakespeare"), LocalityProbe("Bees make", "honey"),
            LocalityProbe("The largest planet in the solar system is", "Jupiter"))


@functools.lru_cache(maxsize=None)
def float64_pair(name):
    """``(base, counterfactual, tokenizer)`` in float64, shared by the tests (none changes a weight)."""
    base, tokenizer = load_model(name, seed=0)
    base = base.to(torch.float64)
    counterfactual = copy.deepcopy(base)
    with torch.no_grad():  # a counterfactual model visibly unlike the base model
        for param in counterfactual.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return base, counterfactual, tokenizer


def full_logit_loss(model, base, batches, *, c_e, c_loc, regularizer=None):
    """The straightforward loss: every position's logits, then the terms read what they need."""
    if regularizer is not None:
        with second_order_attention(model):
            _, edit_nll, penalty = regularizer.loss_and_penalty(model, batches.edits)
    else:
        edit_nll, penalty = target_nll(model(**batches.edits.model_inputs).logits, batches.edits), None
    nlls = [edit_nll, target_nll(model(**batches.rephrases.model_inputs).logits, batches.rephrases)]
    with torch.no_grad():
        base_logits = base(**batches.locality_plain.model_inputs).logits
    full = model(**batches.locality.model_inputs).logits
    aligned = torch.zeros_like(base_logits)
    for b, k in enumerate(batches.locality_prefix):
        span = min(base_logits.shape[1], full.shape[1] - k)
        aligned[b, :span] = full[b, k:k + span]
    loc = locality_kl(base_logits, aligned, batches.locality_plain.attention_mask.bool())
    loss = c_e * torch.cat(nlls).mean() + c_loc * loc
    return loss if penalty is None else regularizer.combine(loss, penalty)


def loss_and_grads(fn, model):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = {"plain": None, "sss": SSSRegularizer(C=0.9), "sss-all-sum": SSSRegularizer(C=0.5, tokens="all", reduction="sum"),
         "sss-input-embeds": SSSRegularizer(C=0.9, target="input_embeds")}  # the last one runs in full


@pytest.mark.parametrize("name, regularizer",
                         [pytest.param(name, CASES[case], id=f"{name}-{case}") for name, case in
                          [("tiny-gpt2", "plain"), ("tiny-gpt2", "sss"), ("tiny-gpt2", "sss-all-sum"),
                           ("tiny-gpt2", "sss-input-embeds"), ("tiny-llama", "plain"), ("tiny-llama", "sss")]])
def test_narrow_logit_loss_and_gradients_equal_the_full_logit_ones(name, regularizer, one_thread):
    base, counterfactual, tokenizer = float64_pair(name)
    batches = objective.counterfactual_batches(tokenizer, counterfactual, REQUESTS, LOCALITY, "\n")
    options = dict(c_e=0.1, c_loc=1.0, regularizer=regularizer)
    expected, expected_grads = loss_and_grads(lambda: full_logit_loss(counterfactual, base, batches, **options),
                                              counterfactual)
    loss, grads = loss_and_grads(lambda: objective.counterfactual_loss(counterfactual, base, batches, **options)[0],
                                 counterfactual)
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0), (float(loss), float(expected))
    assert grads.keys() == expected_grads.keys() and len(grads) == len(list(counterfactual.parameters()))
    for param_name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[param_name], rtol=1e-9, atol=1e-13), param_name
    assert all(p.grad is None for p in base.parameters())


def test_validation_logits_are_the_full_logits_at_the_columns_they_name(tiny_gpt2):
    base, tokenizer = tiny_gpt2
    counterfactual = copy.deepcopy(base)
    batches = objective.counterfactual_batches(tokenizer, counterfactual, REQUESTS, LOCALITY, "\n")
    with torch.no_grad():
        _, _, logits = objective.counterfactual_loss(counterfactual, base, batches, c_e=0.1, c_loc=1.0)
        for which in ("edits", "rephrases"):
            batch = getattr(batches, which)
            columns, narrow = target_window(batch)
            full = counterfactual(**batch.model_inputs).logits
            rows = torch.arange(len(batch)).unsqueeze(1)
            # The window's last column predicts nothing a loss reads and is left zero.
            assert torch.allclose(logits[which].logits[:, :-1], full[rows, columns][:, :-1], atol=1e-5)
            assert not logits[which].logits[:, -1].any()
            assert torch.equal(logits[which].batch.labels, narrow.labels)
        full = counterfactual(**batches.locality.model_inputs).logits
        mask = batches.locality_plain.attention_mask.bool()
        for b, k in enumerate(batches.locality_prefix):
            n = int(mask[b].sum())
            assert torch.allclose(logits["locality"][b, :n], full[b, k:k + n], atol=1e-5)


def test_dropout_draws_are_those_of_the_full_forward(tiny_gpt2):
    """In training mode the backbone consumes the random stream exactly as the full forward does."""
    model, tokenizer = tiny_gpt2
    model.train()
    batch = objective.counterfactual_batches(tokenizer, model, REQUESTS, LOCALITY, "\n").edits
    columns, _ = target_window(batch)
    torch.manual_seed(7)
    full = model(**batch.model_inputs).logits
    torch.manual_seed(7)
    narrow = logits_at(model, batch.model_inputs, columns)
    rows = torch.arange(len(batch)).unsqueeze(1)
    assert torch.allclose(narrow, full[rows, columns], atol=1e-6)
    torch.manual_seed(8)
    assert not torch.allclose(logits_at(model, batch.model_inputs, columns), narrow, atol=1e-3)  # dropout is on


class Wrapped(nn.Module):
    """A causal LM hidden behind a module sss knows no backbone of."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **inputs):
        return self.inner(**inputs)


def test_models_without_a_known_backbone_run_in_full(tiny_llama):
    model, tokenizer = tiny_llama
    batch = objective.counterfactual_batches(tokenizer, model, REQUESTS, LOCALITY, "\n").edits
    columns, _ = target_window(batch)
    assert backbone(model) is model.model and backbone(Wrapped(model)) is None
    with torch.no_grad():
        assert torch.allclose(logits_at(Wrapped(model), batch.model_inputs, columns),
                              logits_at(model, batch.model_inputs, columns), atol=1e-5)
