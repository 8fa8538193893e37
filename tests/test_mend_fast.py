"""MEND's fast paths against a straightforward reference written here.

The reference edit runs a full backward with every parameter requiring grad, keeps each edited
layer's input and output gradient with hooks, transforms each weight's factors on their own
(no batching across weights), and sums explicit per-token outer products ``δ̃_t ũ_tᵀ``; the
reference episode scores every position with the LM head. The optimised paths (frozen base
model, LM head on the target tail only, one transform pass per shape, one matmul over tokens)
must give the same edited weights, training loss and gradients to float32 rounding. The inner
pass's one-pass LM-head gradient (``head_gradient``) is checked against autograd on its own.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from sss import MEND, EditRequest, LocalityProbe, load_model
from sss.data import encode_pairs
from sss.editors.mend import hooks
from sss.losses.head import gradient as head_gradient
from sss.losses import locality_kl, target_nll
from sss.train import Episode

# Two requests of different lengths: the batch is padded, so dropping padding is exercised too.
REQUESTS = [EditRequest("The capital of France is", "Rome", rephrase_prompts=("France's capital city is",)),
            EditRequest("Water boils at a temperature of", "fifty degrees",
                        rephrase_prompts=("At sea level water boils at",))]
LOCALITY = (LocalityProbe("nq question: who wrote hamlet", "William Shakespeare"),
            LocalityProbe("The largest ocean is", "the Pacific"))
# Float32 rounding of differently ordered sums: the weights are O(0.1-1), their edit O(1e-2). Both
# float32 implementations (the optimised edit and the reference) land within this of float64.
WEIGHT_ATOL = 3e-6


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


def float64_copy(editor):
    """The same editor and model in float64 (the normalisation statistics are float64 already)."""
    model = copy.deepcopy(editor.base_model).double()
    twin = MEND(model, editor.tokenizer, rank=editor.config.rank, init_edit_lr=editor.config.init_edit_lr,
                progress=False)
    twin.load_state_dict(editor.state_dict())
    return twin


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_edit_equals_the_reference_edit(name):
    model, tokenizer, editor = trained_looking_editor(name)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in editor.weight_names}
    batch = encode(tokenizer, [(r.prompt, r.target_new) for r in REQUESTS])
    with torch.no_grad():
        expected = {n: w.float() for n, w in reference_new_weights(float64_copy(editor), batch).items()}
        float32_reference = reference_new_weights(editor, batch)
    with editor.edit(REQUESTS):
        for n in editor.weight_names:
            assert (expected[n] - before[n]).abs().max() > 1e-3  # the edit is not vacuous
            torch.testing.assert_close(params[n].detach(), expected[n], atol=WEIGHT_ATOL, rtol=0)
            # the tolerance is float32's: the straightforward float32 edit needs it too
            torch.testing.assert_close(float32_reference[n], expected[n], atol=WEIGHT_ATOL, rtol=0)
    assert all(torch.equal(params[n], before[n]) for n in before)


def autograd_hidden_gradient(hidden, weight, bias, labels, row_weights):
    h = hidden.detach().clone().requires_grad_(True)
    logits = h @ weight.T + (0 if bias is None else bias)
    picked = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (grad,) = torch.autograd.grad(-(picked * row_weights).sum(), h)
    return grad


@pytest.mark.parametrize("with_bias", [False, True])
def test_one_pass_head_gradient_equals_autograd(monkeypatch, with_bias):
    generator = torch.Generator().manual_seed(0)
    vocab, dim = 1000, 16
    weight = torch.randn(vocab, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(vocab, generator=generator, dtype=torch.float64) if with_bias else None
    hidden = torch.randn(5, dim, generator=generator, dtype=torch.float64)
    labels = torch.tensor([3, 999, 500, 3, 0])
    hidden[0] = 4 * weight[3]  # a confident row (p_y near 1): the case the label-free sums are for
    row_weights = torch.tensor([0.5, 0.25, 0.25, 1.0, 0.1], dtype=torch.float64)
    # 7 rows of the head per chunk: many chunks, a ragged last one, labels in first and last chunks.
    monkeypatch.setattr(head_gradient, "CPU_CHUNK_BYTES", 7 * dim * 8)
    expected = autograd_hidden_gradient(hidden, weight, bias, labels, row_weights)
    got = head_gradient.nll_hidden_gradient(hidden, weight, bias, labels, row_weights)
    assert torch.softmax(hidden[0] @ weight.T, -1)[3] > 0.99
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # float32 in, float32 out, within float32 rounding of the float64 answer
    got32 = head_gradient.nll_hidden_gradient(hidden.float(), weight.float(), None if bias is None else bias.float(),
                                              labels, row_weights.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_inner_pass_with_the_head_read_once_equals_the_whole_model_pass(name, monkeypatch):
    model, tokenizer, editor = trained_looking_editor(name)
    model.double()
    params = dict(model.named_parameters())
    current = {n: params[n].detach() for n in editor.weight_names}
    batch = encode(tokenizer, [(r.prompt, r.target_new) for r in REQUESTS])  # padded: two lengths
    assert head_gradient.split_head(model) is not None
    fast = hooks.layer_factors(model, current, batch)
    monkeypatch.setattr(hooks, "split_head", lambda model: None)  # the whole model with its head on the tail
    whole = hooks.layer_factors(model, current, batch)
    for n in editor.weight_names:
        assert torch.equal(fast[n][0], whole[n][0])
        assert whole[n][1].abs().max() > 1e-4
        torch.testing.assert_close(fast[n][1], whole[n][1], rtol=1e-10, atol=1e-12)


def test_the_inner_backward_stops_below_the_lowest_edited_layer():
    model, tokenizer = load_model("tiny-llama")
    editor = MEND(model, tokenizer, layers=(-1,), normalize=False, progress=False)  # block 1 of 2 only
    probes = {"block 0 mlp": "model.layers.0.mlp.down_proj", "block 1 attention": "model.layers.1.self_attn.o_proj",
              "block 1 gate input": "model.layers.1.mlp.gate_proj", "block 1 down input": "model.layers.1.mlp.down_proj",
              "head input": "lm_head"}
    seen = {}

    def record(key):
        def hook(module, args):
            seen[key] = args[0].requires_grad
        return hook

    handles = [model.get_submodule(path).register_forward_pre_hook(record(key)) for key, path in probes.items()]
    try:
        editor.edit(REQUESTS).restore()
    finally:
        for handle in handles:
            handle.remove()
    # Nothing below the first edited layer is in the graph (the backward cannot reach it); above
    # it everything is; and the LM head module does not run (its gradient is formed in one pass).
    assert seen == {"block 0 mlp": False, "block 1 attention": False, "block 1 gate input": False,
                    "block 1 down input": True}


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
