"""MEND's fast paths against a straightforward reference written here.

The reference edit runs a full backward with every parameter requiring grad, keeps each edited
layer's input and output gradient with hooks, transforms each weight's factors on their own
(no batching across weights), and sums explicit per-token outer products ``δ̃_t ũ_tᵀ``; the
reference episode scores every position with the LM head. The optimised paths (frozen base
model, LM head on the target tail only, one transform pass per shape, one matmul over tokens)
must give the same edited weights, training loss and gradients to float32 rounding.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from sss import MEND, EditRequest, LocalityProbe, load_model
from sss.data import encode_pairs
from sss.losses import locality_kl, target_nll
from sss.train import Episode

# Two requests of different lengths: the batch is padded, so dropping padding is exercised too.
REQUESTS = [EditRequest("The capital of France is", "Rome", rephrase_prompts=("France's capital city is",)),
            EditRequest("Water boils at a temperature of", "fifty degrees",
                        rephrase_prompts=("At sea level water boils at",))]
LOCALITY = (LocalityProbe("nq question: who wrote hamlet", "William Shakespeare"),
            LocalityProbe("The largest ocean is", "the Pacific"))
# Float32 rounding of differently ordered sums: the weights are O(0.1-1), their edit O(1e-2).
WEIGHT_ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def trained_looking_editor(name):
    """An editor with statistics and networks moved away from the identity (every part matters)."""
    model, tokenizer = load_model(name)
    editor = MEND(model, tokenizer, rank=16, init_edit_lr=1e-2, progress=False)
    editor.init_statistics(REQUESTS + [EditRequest("Paris is a city in", "Spain")])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, param in editor.networks.named_parameters():
            if pname != "edit_lrs":
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model, tokenizer, editor


def encode(tokenizer, pairs):
    prompts, targets = zip(*pairs)
    return encode_pairs(tokenizer, list(prompts), list(targets))


def reference_new_weights(editor, batch):
    model = editor.base_model
    params = dict(model.named_parameters())
    captured = {}

    def keeper(name):
        def hook(module, args, output):
            output.retain_grad()
            captured[name] = (args[0], output)
        return hook

    hooks = [model.get_submodule(n.rsplit(".", 1)[0]).register_forward_hook(keeper(n)) for n in editor.weight_names]
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            target_nll(model(**batch.model_inputs).logits, batch).mean().backward()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    real = batch.attention_mask.bool().reshape(-1)
    new = {}
    for name in editor.weight_names:
        inputs, output = captured[name]
        u = inputs.detach().reshape(-1, inputs.shape[-1])[real]
        delta = output.grad.reshape(-1, output.shape[-1])[real]
        u_t, delta_t = editor.networks.transform(name, u, delta)
        per_token = [torch.outer(u_t[t], delta_t[t]) if editor.conv1d[name] else torch.outer(delta_t[t], u_t[t])
                     for t in range(u_t.shape[0])]
        new[name] = params[name].detach() - editor.networks.edit_lr(name) * torch.stack(per_token).sum(0)
    return new


def reference_loss(editor, tokenizer, requests, locality):
    model = editor.base_model
    edit = encode(tokenizer, [(r.prompt, r.target_new) for r in requests])
    rephrase = encode(tokenizer, [(p, r.target_new) for r in requests for p in r.rephrase_prompts])
    loc = encode(tokenizer, [(p.prompt, p.answer) for p in locality])
    with torch.no_grad():
        pre_loc = model(**loc.model_inputs).logits
    new = reference_new_weights(editor, edit)

    def logits(batch):
        return functional_call(model, new, args=(), kwargs=batch.model_inputs).logits

    edit_loss = torch.cat([target_nll(logits(edit), edit), target_nll(logits(rephrase), rephrase)]).mean()
    return 0.1 * edit_loss + 1.0 * locality_kl(pre_loc, logits(loc), loc.attention_mask.bool())


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_edit_equals_the_reference_edit(name):
    model, tokenizer, editor = trained_looking_editor(name)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in editor.weight_names}
    with torch.no_grad():
        expected = reference_new_weights(editor, encode(tokenizer, [(r.prompt, r.target_new) for r in REQUESTS]))
    with editor.edit(REQUESTS):
        for n in editor.weight_names:
            assert (expected[n] - before[n]).abs().max() > 1e-3  # the edit is not vacuous
            torch.testing.assert_close(params[n].detach(), expected[n], atol=WEIGHT_ATOL, rtol=0)
    assert all(torch.equal(params[n], before[n]) for n in before)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_training_loss_and_gradients_equal_the_reference(name):
    model, tokenizer, editor = trained_looking_editor(name)
    editor.networks.train()
    for p in model.parameters():
        p.requires_grad_(False)  # as in fit()
    network_params = list(editor.networks.parameters())
    # Both sides observe the normalisation statistics; they only join them on commit().
    loss = editor.episode_losses(Episode(tuple(REQUESTS), LOCALITY))["loss"]
    grads = torch.autograd.grad(loss, network_params)
    expected = reference_loss(editor, tokenizer, REQUESTS, LOCALITY)
    expected_grads = torch.autograd.grad(expected, network_params)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 1e-4 for g in grads)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_requires_grad_flags_come_back_after_an_edit_and_after_a_failure():
    model, tokenizer, editor = trained_looking_editor("tiny-llama")
    params = dict(model.named_parameters())
    # A mixed pattern (as a user who froze part of the model would have): it must come back as is.
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    flags = {n: p.requires_grad for n, p in params.items()}
    before = {n: params[n].detach().clone() for n in editor.weight_names}

    seen = []

    def record(module, args, output):
        # During the inner pass only the edited weights require grad (its backward reaches the
        # edited layers' outputs only).
        seen.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))

    hook = model.get_submodule(editor.weight_names[0].rsplit(".", 1)[0]).register_forward_hook(record)
    editor.edit(REQUESTS[0]).restore()
    hook.remove()
    assert seen == [sorted(editor.weight_names)]
    assert {n: p.requires_grad for n, p in params.items()} == flags

    def fail(module, args, output):
        raise KeyboardInterrupt

    hook = model.get_submodule(editor.weight_names[-1].rsplit(".", 1)[0]).register_forward_hook(fail)
    with pytest.raises(KeyboardInterrupt):
        editor.edit(REQUESTS[0])
    hook.remove()
    assert {n: p.requires_grad for n, p in params.items()} == flags
    assert all(torch.equal(params[n], before[n]) for n in before)
