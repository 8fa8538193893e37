"""SSSRegularizer against independent computations of Eq. 9, and its gradient against finite differences."""
import pytest
import torch

from sss import SSSRegularizer
from sss.data import encode_pairs
from sss.losses import SparsityRegularizer, regularizer_from_description, target_nll
from sss.models import load_model, mlp_out_path, second_order_attention

PROMPT = "The mother tongue of Danielle Darrieux is"
TARGET = "English language"


def _reference_sss(model, tokenizer, target: str, tokens: str = "prompt", reduction: str = "mean") -> float:
    """Eq. 9 computed another way: torch.func on a function of the chosen embeddings."""
    batch = encode_pairs(tokenizer, [PROMPT], [TARGET])
    ids, mask = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        if target == "input_embeds":
            start = model.get_input_embeddings()(ids)

            def J(x):
                return target_nll(model(inputs_embeds=x, attention_mask=mask).logits, batch).sum()
        else:
            # final hidden states (after the final norm); the logits are the LM head applied to them
            start = model(**batch.model_inputs, output_hidden_states=True).hidden_states[-1]

            def J(h):
                return target_nll(model.get_output_embeddings()(h), batch).sum()
    grads = torch.func.grad(J)(start)[0]  # [L, H]
    counted = batch.prompt_mask[0] if tokens == "prompt" else batch.attention_mask[0].bool()
    squared = grads.pow(2).sum(-1)[counted]
    return float((squared.mean() if reduction == "mean" else squared.sum()).detach())


@pytest.mark.parametrize("target", ["last_hidden", "input_embeds"])
@pytest.mark.parametrize("tokens", ["prompt", "all"])
def test_score_matches_an_independent_computation(tiny_model, target, tokens):
    model, tokenizer = tiny_model
    model = model.double()
    for reduction in ("mean", "sum"):
        expected = _reference_sss(model, tokenizer, target, tokens, reduction)
        got = SSSRegularizer(target=target, tokens=tokens, reduction=reduction).score(model, tokenizer, PROMPT, TARGET)
        assert expected > 0
        assert got == pytest.approx(expected, rel=1e-4)


def test_last_hidden_prompt_gradient_lives_on_the_last_prompt_token(tiny_gpt2):
    """Teacher forcing: a prompt token's final hidden state only feeds its own next-token logits."""
    model, tokenizer = tiny_gpt2
    reg = SSSRegularizer()
    batch = encode_pairs(tokenizer, [PROMPT], [TARGET])
    logits, embeddings = reg.forward(model, batch)
    (grads,) = torch.autograd.grad(target_nll(logits, batch).sum(), embeddings)
    norms = grads[0].pow(2).sum(-1)
    last = int(batch.prompt_lengths[0]) - 1
    assert norms[last] > 0 and norms[:last].eq(0).all()


def test_batched_penalty_is_the_mean_of_single_example_penalties(tiny_llama):
    model, tokenizer = tiny_llama
    model = model.double()
    reg = SSSRegularizer(target="input_embeds")
    prompts, targets = [PROMPT, "Paris is the capital of"], ["English", "France and Navarre"]
    singles = [reg.score(model, tokenizer, p, t) for p, t in zip(prompts, targets)]
    batch = encode_pairs(tokenizer, prompts, targets)
    with torch.no_grad(), torch.enable_grad():
        _, _, value = reg.loss_and_penalty(model, batch, create_graph=False)
    assert float(value) == pytest.approx(sum(singles) / 2, rel=1e-6)


@pytest.mark.parametrize("target", ["last_hidden", "input_embeds"])
def test_penalty_gradient_matches_finite_differences(target):
    model, tokenizer = load_model("tiny-gpt2", dtype=torch.float64, seed=3)
    weight = model.get_submodule(mlp_out_path(model, 0)).weight
    reg = SSSRegularizer(target=target)
    batch = encode_pairs(tokenizer, [PROMPT, "Paris is the capital of"], [TARGET, "France"])

    def sss_value():
        with second_order_attention(model):
            return reg.loss_and_penalty(model, batch)[2]

    (analytic,) = torch.autograd.grad(sss_value(), weight)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        eps = 1e-5
        values = []
        for shift in (eps, -2 * eps):
            with torch.no_grad():
                weight.add_(shift * direction)
            values.append(float(sss_value().detach()))
        with torch.no_grad():
            weight.add_(eps * direction)
        plus, minus = values
        numeric = (plus - minus) / (2 * eps)
        assert float((analytic * direction).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-10)


def test_combine_is_eq_10():
    reg = SSSRegularizer(C=0.25)
    assert float(reg.combine(torch.tensor(2.0), torch.tensor(6.0))) == pytest.approx(0.75 * 2 + 0.25 * 6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(C=1.5), "C must be a number in"),
    (dict(target="attention"), "unknown target 'attention'"),
    (dict(tokens="target"), "unknown tokens 'target'"),
    (dict(reduction="max"), "unknown reduction 'max'"),
])
def test_unknown_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SSSRegularizer(**kwargs)


def test_a_custom_penalty_plugs_in(tiny_gpt2):
    class SquaredLoss(SparsityRegularizer):
        def penalty(self, loss, embeddings, token_mask, *, create_graph=True):
            return loss.pow(2).mean()

    model, tokenizer = tiny_gpt2
    value = SquaredLoss(C=0.5).score(model, tokenizer, PROMPT, TARGET)
    batch = encode_pairs(tokenizer, [PROMPT], [TARGET])
    with torch.no_grad():
        expected = float(target_nll(model(**batch.model_inputs).logits, batch)[0] ** 2)
    assert value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("options", [
    dict(C=0.3, target="input_embeds", tokens="all", reduction="sum"),
    dict(C=1, target=1, tokens="prompt", reduction="mean"),
    dict(C=0.0, target="0"),
])
def test_a_description_rebuilds_the_same_regularizer(options):
    original = SSSRegularizer(**options)
    rebuilt = regularizer_from_description(original.describe())
    assert type(rebuilt) is SSSRegularizer and rebuilt is not original
    assert rebuilt.describe() == original.describe()
    assert (rebuilt.C, rebuilt.target, rebuilt.tokens, rebuilt.reduction) == (
        original.C, original.target, original.tokens, original.reduction)


def test_rebuilding_nothing_gives_nothing_and_unknown_names_are_named():
    assert regularizer_from_description(None) is None
    with pytest.raises(ValueError, match="'MagicRegularizer'"):
        regularizer_from_description({"name": "MagicRegularizer", "C": 0.5})
    with pytest.raises(ValueError, match="'temperature'"):
        regularizer_from_description({"name": "SSSRegularizer", "temperature": 2.0})


@pytest.mark.parametrize("C", [True, False, -0.1, "0.9", None, float("nan")])
def test_C_must_be_a_real_number_in_the_unit_interval(C):
    with pytest.raises(ValueError, match="C must be"):
        SSSRegularizer(C=C)


@pytest.mark.parametrize("target", [True, -1, "-1", "block3", 2.0])
def test_bad_targets_are_named(target):
    with pytest.raises(ValueError, match="target"):
        SSSRegularizer(target=target)


def test_a_block_target_past_the_model_is_named(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    with pytest.raises(ValueError, match="target block 7 is out of range"):
        SSSRegularizer(target=7).score(model, tokenizer, PROMPT, TARGET)
