"""FT-L's cached step gives the straightforward loop's result (sss/editors/ft_forward.py).

The reference below is the loop FT-L ran before the caching: a full forward over prompt and
target at every step, the full LM head, the loss from ``sss.losses``. Both run the same
optimiser on the same weights; the final weights must agree to float64 rounding
(atol 1e-12, rtol 1e-10; float32 is checked once at atol 1e-6, rtol 1e-5), and the recorded
losses and penalties at every step too.
"""
import contextlib

import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer, load_model
from sss.editors.block_cache import BlockCache
from sss.data import encode_pairs
from sss.editors.ft_forward import full_path_reason
from sss.losses import edit_loss
from sss.models import second_order_attention

STEPS = 6
OPTIONS = dict(lr=5e-2, steps=STEPS, norm_constraint=0.05, early_stop_loss=-1.0, progress=False)
# Prompts and targets of different token lengths, so the batch is padded on the right.
REQUESTS = [EditRequest("The capital of France is", "Rome"),
            EditRequest("My favourite colour, if you ask me today, is", "dark forest green"),
            EditRequest("Water boils at", "one hundred degrees")]
FLOAT64 = dict(atol=1e-12, rtol=1e-10)
FLOAT32 = dict(atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def model64(request):
    return load_model(request.param, dtype="float64")


def reference_edit(model, tokenizer, requests, parameter_names, objective, regularizer):
    """The straightforward FT-L loop; returns the final trained weights and the history, then undoes it."""
    batch = encode_pairs(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
    trained = [model.get_parameter(name) for name in parameter_names]
    originals = [p.detach().clone() for p in trained]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in trained))
    optimizer = torch.optim.Adam(trained, lr=OPTIONS["lr"])
    radius, history = OPTIONS["norm_constraint"], []
    try:
        for _ in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            with second_order_attention(model) if regularizer else contextlib.nullcontext():
                if regularizer is None:
                    logits, penalty = model(**batch.model_inputs).logits, None
                else:
                    logits, _, penalty = regularizer.loss_and_penalty(model, batch)
            edit = edit_loss(logits, batch, objective).mean()
            history.append((edit.item(), None if penalty is None else penalty.item()))
            (edit if penalty is None else regularizer.combine(edit, penalty)).backward()
            optimizer.step()
            with torch.no_grad():
                for p, original in zip(trained, originals):
                    p.copy_(torch.clamp(p, original - radius, original + radius))
        return {name: p.detach().clone() for name, p in zip(parameter_names, trained)}, history
    finally:
        with torch.no_grad():
            for p, original in zip(trained, originals):
                p.copy_(original)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def compare(model, tokenizer, *, objective, layers=(0,), regularizer=None, requests=REQUESTS, tolerance=FLOAT64):
    editor = FTL(model, tokenizer, objective=objective, layers=layers, regularizer=regularizer, **OPTIONS)
    expected, expected_history = reference_edit(model, tokenizer, requests, editor.parameter_names, objective,
                                                regularizer)
    with editor.edit(requests) as handle:
        for name in editor.parameter_names:
            weight = model.get_parameter(name)
            assert not torch.equal(weight, handle.originals[name]), f"{name} did not move: the check would be empty"
            torch.testing.assert_close(weight, expected[name], **tolerance, msg=name)
        history = [(h["edit_loss"], h.get("penalty")) for h in handle.info["history"]]
    assert len(history) == STEPS
    close = dict(rel=1e-9, abs=1e-15) if tolerance is FLOAT64 else dict(rel=1e-5, abs=1e-8)
    for (loss, penalty), (want_loss, want_penalty) in zip(history, expected_history):
        assert loss == pytest.approx(want_loss, **close)
        assert (penalty is None) == (want_penalty is None)
        if penalty is not None:
            assert penalty == pytest.approx(want_penalty, **close)


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
def test_plain_edit_matches_the_reference(model64, objective):
    compare(*model64, objective=objective)


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
def test_upper_block_and_multi_layer_edits_match_the_reference(model64, objective):
    compare(*model64, objective=objective, layers=(1,))
    compare(*model64, objective=objective, layers=(0, 1))


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
@pytest.mark.parametrize("tokens", ["prompt", "all"])
def test_sss_last_hidden_edit_matches_the_reference(model64, objective, tokens):
    compare(*model64, objective=objective, regularizer=SSSRegularizer(C=0.9, tokens=tokens))


@pytest.mark.parametrize("target, layers", [(1, (0,)), (0, (0,)), (1, (1,)), (1, (0, 1))])
def test_sss_block_target_edit_matches_the_reference(model64, target, layers):
    # target above the edited block: the cached path taps it; equal to it: the block reruns whole.
    compare(*model64, objective="prompt_last", layers=layers, regularizer=SSSRegularizer(C=0.5, target=target))


def test_float32_edit_matches_the_reference(tiny_llama):
    compare(*tiny_llama, objective="prompt_last", regularizer=SSSRegularizer(C=0.9),
            tolerance=FLOAT32)
    compare(*tiny_llama, objective="target_new", layers=(0, 1), tolerance=FLOAT32)


def test_targets_the_cache_cannot_serve_take_the_full_path(tiny_gpt2):
    model, _ = tiny_gpt2
    assert full_path_reason(model, None, 0) is None
    assert full_path_reason(model, SSSRegularizer(), 1) is None
    assert "input_embeds" in full_path_reason(model, SSSRegularizer(target="input_embeds"), 0)
    assert "below the lowest edited block" in full_path_reason(model, SSSRegularizer(target=0), 1)
    model.train()
    try:
        assert "training mode" in full_path_reason(model, None, 0)
    finally:
        model.eval()


def test_full_path_edits_match_the_reference(model64):
    compare(*model64, objective="target_new", layers=(1,), regularizer=SSSRegularizer(C=0.9, target=0))
    compare(*model64, objective="prompt_last", regularizer=SSSRegularizer(C=0.9, target="input_embeds"))


@pytest.mark.parametrize("start", [0, 1])
def test_block_cache_reproduces_the_forward_bit_for_bit(tiny_gpt2, tiny_llama, start):
    for model, tokenizer in (tiny_gpt2, tiny_llama):
        batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
        with torch.no_grad():
            expected = model(**batch.model_inputs).logits
            cache = BlockCache.capture(model, start, batch.input_ids, batch.attention_mask)
            hidden, _ = cache.run_blocks(cache.block_output(), start + 1)
            logits = model.get_output_embeddings()(cache.final_hidden(hidden))
            rerun, _ = cache.run_blocks(cache.block_input, start)
        assert torch.equal(logits, expected)
        assert torch.equal(model.get_output_embeddings()(cache.final_hidden(rerun)), expected)
        assert not model._forward_hooks and not model._forward_pre_hooks
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
