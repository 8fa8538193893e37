"""FT-L's cached step gives the straightforward loop's result (sss/editors/ftl/cached_step.py).

The reference below is the loop FT-L ran before the caching: a full forward over prompt and
target at every step, the full LM head, the loss from ``sss.losses``. Both run the same
optimiser on the same weights; the final weights must agree to float64 rounding
(atol 1e-12, rtol 1e-10), and the recorded losses and penalties at every step too. float32
(the LM head read through its transposed copy) is checked at atol 5e-5 per element
(1e-3 of the learning rate: Adam moves an element whose gradient is ~0 by up to lr whatever
its sign, so rounding can move single elements) and 1e-5 on the relative norm of the
difference of the weight deltas.
"""
import contextlib

import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer, load_model
from sss.editors.core.block_cache import BlockCache
from sss.data import encode_pairs
from sss.losses.head import transposed
from sss.editors.ftl.cached_step import fed_width, full_path_reason, graph_origin
from sss.losses import SparsityRegularizer, first_target_nll, target_nll
from sss.losses.base import forward_with_embeddings
from sss.losses import edit_loss
from sss.models import second_order_attention

STEPS = 6
OPTIONS = dict(lr=5e-2, steps=STEPS, norm_constraint=0.05, early_stop_loss=-1.0, progress=False)
# Prompts and targets of different token lengths, so the batch is padded on the right.
REQUESTS = [EditRequest("The capital of France is", "Rome"),
            EditRequest("My favourite colour, if you ask me today, is", "dark forest green"),
            EditRequest("Water boils at", "one hundred degrees")]
FLOAT64 = dict(atol=1e-12, rtol=1e-10)
FLOAT32 = dict(atol=5e-5, rtol=0.0)
FLOAT32_DELTA = 1e-5  # largest relative difference of the weight deltas


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
            torch.testing.assert_close(weight, expected[name], **tolerance)
            if tolerance is FLOAT32:
                original = handle.originals[name]
                relative = ((weight - expected[name]).norm() / (expected[name] - original).norm()).item()
                assert relative <= FLOAT32_DELTA, f"{name}: weight deltas differ by {relative:.1e} relative"
        history = [(h["edit_loss"], h.get("penalty")) for h in handle.info["history"]]
    assert len(history) == STEPS
    close = dict(rel=1e-9, abs=1e-15) if tolerance is FLOAT64 else dict(rel=1e-5, abs=1e-6)
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
    model, _ = tiny_llama
    compare(*tiny_llama, objective="prompt_last", regularizer=SSSRegularizer(C=0.9),
            tolerance=FLOAT32)
    compare(*tiny_llama, objective="prompt_last", tolerance=FLOAT32)
    compare(*tiny_llama, objective="target_new", layers=(0, 1), tolerance=FLOAT32)
    compare(*tiny_llama, objective="prompt_last", layers=(1,), regularizer=SSSRegularizer(C=0.5, target=1),
            tolerance=FLOAT32)
    compare(*tiny_llama, objective="prompt_last", layers=(1,), regularizer=SSSRegularizer(C=0.9, target="input_embeds"),
            tolerance=FLOAT32)
    assert not [name for name, module in model.named_modules() if "forward" in module.__dict__]


def test_only_training_mode_and_own_forward_passes_take_the_full_path(tiny_gpt2):
    model, _ = tiny_gpt2
    assert full_path_reason(model, None, 0) is None
    assert full_path_reason(model, SSSRegularizer(), 1) is None
    assert full_path_reason(model, SSSRegularizer(target="input_embeds"), 0) is None

    class OwnForward(SSSRegularizer):
        def forward(self, model, batch, call=None):
            return super().forward(model, batch, call)
    assert "computes its own forward pass" in full_path_reason(model, OwnForward(), 0)
    model.train()
    try:
        assert "training mode" in full_path_reason(model, None, 0)
    finally:
        model.eval()


def test_penalties_inside_the_frozen_part_keep_its_graph():
    assert graph_origin(SSSRegularizer(target="input_embeds"), 3) == "input_embeds"
    assert graph_origin(SSSRegularizer(target=3), 3) == 3 and graph_origin(SSSRegularizer(target=1), 3) == 1
    assert graph_origin(SSSRegularizer(target=4), 3) is None and graph_origin(SSSRegularizer(), 3) is None
    assert graph_origin(None, 3) is None


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
@pytest.mark.parametrize("tokens", ["prompt", "all"])
def test_sss_input_embeds_edit_matches_the_reference(model64, objective, tokens):
    compare(*model64, objective=objective, layers=(1,), regularizer=SSSRegularizer(C=0.9, target="input_embeds",
                                                                                    tokens=tokens))


def test_sss_below_the_edited_block_matches_the_reference(model64):
    compare(*model64, objective="target_new", layers=(1,), regularizer=SSSRegularizer(C=0.9, target=0))
    compare(*model64, objective="prompt_last", layers=(0, 1), regularizer=SSSRegularizer(C=0.9, target=0))


def test_input_embeds_edit_runs_the_frozen_part_once(tiny_llama):
    # The frozen block's forward (block 0 below the edited block 1) runs in the capture only;
    # every step differentiates the graph it left.
    model, tokenizer = tiny_llama
    runs = []
    hook = model.model.layers[0].mlp.register_forward_hook(lambda *args: runs.append(1))
    try:
        editor = FTL(model, tokenizer, layers=(1,), regularizer=SSSRegularizer(C=0.9, target="input_embeds"),
                     **OPTIONS)
        with editor.edit(REQUESTS) as handle:
            assert len(handle.info["history"]) == STEPS
    finally:
        hook.remove()
    assert len(runs) == 1


def test_input_embeds_penalty_needs_the_target_tokens_but_not_the_last(model64):
    # Why that path feeds the target (unlike last_hidden): over the prompt, dJ/dx of the input
    # embeddings with the target fed differs from that of J's first term with the prompt alone,
    # and equals the one with every token but the last fed.
    model, tokenizer = model64
    batch = encode_pairs(tokenizer, ["The capital of France is"], ["the city of Rome"])
    assert int(batch.target_lengths) >= 2
    embed = model.get_input_embeddings()
    rows = torch.arange(1).unsqueeze(1)

    def prompt_gradient(width, loss_of):
        x = embed(batch.input_ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x[:, :width], attention_mask=batch.attention_mask[:, :width]).logits
        (grad,) = torch.autograd.grad(loss_of(logits).sum(), x)
        return grad[batch.prompt_mask]

    length, prompt = batch.input_ids.shape[1], int(batch.prompt_lengths)
    full = prompt_gradient(length, lambda logits: target_nll(logits, batch))
    without_last = prompt_gradient(length - 1, lambda logits: target_nll(
        torch.cat([logits, torch.zeros_like(logits[:, :1])], 1), batch))
    prompt_alone = prompt_gradient(prompt, lambda logits: first_target_nll(logits[rows, prompt - 1], batch))
    torch.testing.assert_close(without_last, full, **FLOAT64)
    assert (prompt_alone - full).abs().max() > 1e-3 * full.abs().max()


def test_fed_width_keeps_the_last_token_only_where_the_penalty_counts_it(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    length = batch.input_ids.shape[1]
    assert fed_width(batch, None, prompt_only=True) == int(batch.prompt_lengths.max())
    assert fed_width(batch, None, prompt_only=False) == length - 1
    assert fed_width(batch, SSSRegularizer(target="input_embeds"), prompt_only=False) == length - 1
    assert fed_width(batch, SSSRegularizer(target="input_embeds", tokens="all"), prompt_only=False) == length


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
        assert all("forward" not in m.__dict__ for m in model.modules())  # the skipped blocks run again


@pytest.mark.parametrize("leaf_at", ["input_embeds", 0, 1])
def test_block_cache_leaf_carries_the_frozen_part_gradient(model64, leaf_at):
    # The cached tensors' graph from the leaf gives the model's own gradient of the logits.
    model, tokenizer = model64
    batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    cache = BlockCache.capture(model, 1, batch.input_ids, batch.attention_mask, leaf_at=leaf_at)
    hidden, _ = cache.run_blocks(cache.block_output(), 2)
    logits = model.get_output_embeddings()(cache.final_hidden(hidden))
    weights = torch.randn_like(logits)
    (grad,) = torch.autograd.grad((logits * weights).sum(), cache.leaf)
    expected_logits, x = forward_with_embeddings(model, batch, leaf_at)  # what the reference loop differentiates
    (expected,) = torch.autograd.grad((expected_logits * weights).sum(), x)
    torch.testing.assert_close(logits, expected_logits, **FLOAT64)
    torch.testing.assert_close(grad, expected, **FLOAT64)
    assert grad.abs().sum() > 0


def test_block_cache_refuses_a_leaf_above_its_block(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    batch = encode_pairs(tokenizer, ["a b"], ["c"])
    for bad in (1, "last_hidden", -1):
        with pytest.raises(ValueError, match="leaf_at"):
            BlockCache.capture(model, 0, batch.input_ids, leaf_at=bad)


def test_block_cache_capture_does_not_run_the_blocks_above(tiny_llama):
    model, tokenizer = tiny_llama
    batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    blocks = model.model.layers
    runs = []
    hooks = [block.mlp.register_forward_hook(lambda module, args, output, i=i: runs.append(i))
             for i, block in enumerate(blocks)]
    try:
        cache = BlockCache.capture(model, 0, batch.input_ids, batch.attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    assert runs == [0] and len(blocks) > 1
    assert sorted(cache.calls) == list(range(len(blocks)))  # yet every block's call was caught


def reads_last_prompt_gradient_only(regularizer):
    return regularizer is not None and regularizer.shortcuts().last_prompt_gradient_only


def test_sss_prompt_shortcut_only_where_the_penalty_reads_the_last_prompt_gradient():
    assert reads_last_prompt_gradient_only(SSSRegularizer())
    assert not reads_last_prompt_gradient_only(None)
    assert not reads_last_prompt_gradient_only(SSSRegularizer(tokens="all"))
    assert not reads_last_prompt_gradient_only(SSSRegularizer(target=1))

    class OwnPenalty(SSSRegularizer):
        def penalty(self, loss, embeddings, token_mask, *, create_graph=True):
            return embeddings.pow(2).mean()
    assert not reads_last_prompt_gradient_only(OwnPenalty())
    assert OwnPenalty().shortcuts().reads_target_positions  # its penalty may read any position

    class OwnForward(SSSRegularizer):
        def forward(self, model, batch, call=None):
            return super().forward(model, batch, call)
    assert not OwnForward().shortcuts().own_forward and not reads_last_prompt_gradient_only(OwnForward())

    class PlainPenalty(SparsityRegularizer):  # the base class promises nothing about its penalty
        def penalty(self, loss, embeddings, token_mask, *, create_graph=True):
            return loss.mean()
    assert PlainPenalty().shortcuts().own_forward and PlainPenalty().shortcuts().gradient_positions is None
    assert not reads_last_prompt_gradient_only(PlainPenalty())


def test_first_target_nll_has_the_prompt_gradient_of_the_full_loss(model64):
    # The shortcut's claim itself: over the prompt, dJ/dx of the full J equals that of its first term.
    model, tokenizer = model64
    batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    head = model.get_output_embeddings()
    hidden = torch.randn(len(batch), batch.input_ids.shape[1], head.in_features, dtype=torch.float64,
                         requires_grad=True)
    (full,) = torch.autograd.grad(target_nll(head(hidden), batch).sum(), hidden)
    rows = torch.arange(len(batch)).unsqueeze(1)
    last = head(hidden[rows, batch.last_prompt_positions.unsqueeze(1)])
    (short,) = torch.autograd.grad(first_target_nll(last, batch).sum(), hidden)
    prompt = batch.prompt_mask.unsqueeze(-1)
    assert short[prompt.expand_as(short)].abs().sum() > 0
    torch.testing.assert_close(short * prompt, full * prompt, **FLOAT64)


def test_transposed_copy_is_exact_and_follows_in_place_changes():
    weight = torch.randn(5, 3)
    first = transposed(weight)
    assert torch.equal(first, weight.t()) and first.is_contiguous() and transposed(weight) is first
    with torch.no_grad():
        weight.add_(1.0)
    assert torch.equal(transposed(weight), weight.t())
    with pytest.raises(ValueError, match="requires grad"):
        transposed(torch.randn(2, 2, requires_grad=True))
