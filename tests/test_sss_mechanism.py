"""What each reading of SSS measures (issue 11, item 5; docs/sss.md).

* ``last_hidden`` + prompt tokens is a closed form in the next-token distribution after the prompt.
* A block index ``k`` takes the gradient at the residual stream entering block ``k``: every prompt
  token counts, and the penalty's own gradient reaches the weights below and above ``k``.
"""
import contextlib

import pytest
import torch

from sss import SSSRegularizer
from sss.data import encode_pairs
from sss.losses import target_nll
from sss.models import layout_of, load_model, mlp_out_path, second_order_attention

PAIRS = [
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("Paris is the capital of", "France and Navarre"),
    ("Toko Yasuda, the", "guitar player of the band"),
]


def _float64(name):
    return load_model(name, dtype=torch.float64, seed=1)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("prompt, target", PAIRS)
def test_last_hidden_prompt_sss_is_a_closed_form_of_the_next_token_distribution(name, prompt, target):
    """SSS = ||W^T (p - e_{y1})||^2 / (m |y|^2).

    J is the mean target NLL, so the only term of J the last prompt position's head input h
    feeds is -log p(y1 | prompt) / |y|; d/dh of it is W^T (p - e_{y1}) / |y| (W the LM head,
    [vocab, hidden]; GPT-2's is tied to the token embeddings). The other prompt positions get
    zero, and reduction="mean" divides the one squared norm by the prompt length m.
    """
    model, tokenizer = _float64(name)
    batch = encode_pairs(tokenizer, [prompt], [target])
    m, n_target = int(batch.prompt_lengths[0]), int(batch.target_lengths[0])
    assert n_target == batch.target_mask[0].sum()
    with torch.no_grad():
        logits = model(**batch.model_inputs).logits[0, m - 1]
    W = model.get_output_embeddings().weight.detach()  # [V, H]
    residual = torch.softmax(logits, -1)
    residual[batch.input_ids[0, m]] -= 1.0  # p - e_{y1}
    closed_form = float((W.T @ residual).pow(2).sum()) / (m * n_target ** 2)

    got = SSSRegularizer(target="last_hidden", tokens="prompt").score(model, tokenizer, prompt, target)
    assert got == pytest.approx(closed_form, rel=1e-10, abs=0)


@contextlib.contextmanager
def perturbed_input(module, shape):
    """A zero tensor added to ``module``'s input hidden states: d/d(it) is d/d(that input), found without sss."""
    delta = torch.zeros(*shape, dtype=torch.float64, requires_grad=True)

    def add_delta(module, args, kwargs):
        if args:
            return (args[0] + delta,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}

    hook = module.register_forward_pre_hook(add_delta, with_kwargs=True)
    try:
        yield delta
    finally:
        hook.remove()


def _target_module(model, target):
    if target == "last_hidden":
        return model.get_output_embeddings()
    return model.get_submodule(layout_of(model).blocks)[int(target)]


def _reference_penalty(model, batch, target, create_graph):
    """Eq. 9 with the gradient taken at a perturbation of the target's input, mean over prompt tokens."""
    shape = (*batch.input_ids.shape, model.config.hidden_size)
    with perturbed_input(_target_module(model, target), shape) as delta, second_order_attention(model):
        J = target_nll(model(**batch.model_inputs).logits, batch).sum()
        (grad,) = torch.autograd.grad(J, delta, create_graph=create_graph)
    mask = batch.prompt_mask.to(grad.dtype)
    return grad, ((grad.pow(2).sum(-1) * mask).sum(-1) / mask.sum(-1)).mean()


def _J_of_a_shifted_coordinate(model, batch, block, index, eps):
    shape = (*batch.input_ids.shape, model.config.hidden_size)
    with perturbed_input(_target_module(model, block), shape) as delta, torch.no_grad():
        delta[index] = eps
        return float(target_nll(model(**batch.model_inputs).logits, batch).sum())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("block", [0, 1])
def test_block_target_takes_the_gradient_at_the_block_input(name, block):
    model, tokenizer = _float64(name)
    prompt, target = PAIRS[1]
    batch = encode_pairs(tokenizer, [prompt], [target])
    reg = SSSRegularizer(target=str(block))  # a CLI string works too
    with second_order_attention(model):
        logits, hidden = reg.forward(model, batch)
        (ours,) = torch.autograd.grad(target_nll(logits, batch).sum(), hidden)
    expected, reference_value = _reference_penalty(model, batch, block, create_graph=False)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    if name == "tiny-gpt2":  # and the perturbation route by central differences (Llama's RMSNorm runs in float32)
        index, eps = (0, 1, 3), 1e-5
        numeric = (_J_of_a_shifted_coordinate(model, batch, block, index, eps)
                   - _J_of_a_shifted_coordinate(model, batch, block, index, -eps)) / (2 * eps)
        assert float(expected[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-10)

    prompt_norms = expected[0].pow(2).sum(-1)[batch.prompt_mask[0]]
    assert (prompt_norms > 0).all()  # every prompt token matters, unlike last_hidden below
    assert reg.score(model, tokenizer, prompt, target) == pytest.approx(float(reference_value), rel=1e-9)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_last_hidden_sees_only_the_last_prompt_token(name):
    model, tokenizer = _float64(name)
    prompt, target = PAIRS[1]
    batch = encode_pairs(tokenizer, [prompt], [target])
    logits, hidden = SSSRegularizer().forward(model, batch)
    (grad,) = torch.autograd.grad(target_nll(logits, batch).sum(), hidden)
    norms = grad[0].pow(2).sum(-1)[batch.prompt_mask[0]]
    assert norms[-1] > 0 and norms[:-1].eq(0).all()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("target", ["last_hidden", 1])
def test_the_penalty_gradient_reaches_mlp_weights_below_and_at_the_target(name, target):
    """create_graph=True: d SSS / d W for the MLP output weights of blocks 0 and 1.

    Against the perturbation route's second-order gradient on both models, and against finite
    differences on GPT-2 (Llama's float32 RMSNorm makes small steps too noisy in float64).
    """
    model, tokenizer = _float64(name)
    reg = SSSRegularizer(target=target)
    batch = encode_pairs(tokenizer, [p for p, _ in PAIRS[:2]], [t for _, t in PAIRS[:2]])

    def penalty():
        with second_order_attention(model):
            return reg.loss_and_penalty(model, batch)[2]

    weights = [model.get_submodule(mlp_out_path(model, layer)).weight for layer in (0, 1)]
    analytic = torch.autograd.grad(penalty(), weights)
    reference = torch.autograd.grad(_reference_penalty(model, batch, target, create_graph=True)[1], weights)
    generator = torch.Generator().manual_seed(0)
    for weight, grad, expected in zip(weights, analytic, reference):
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-13)
        if name != "tiny-gpt2":
            continue
        direction = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        eps, values = 1e-5, []
        for shift in (eps, -2 * eps, eps):
            with torch.no_grad():
                weight.add_(shift * direction)
            values.append(float(penalty().detach()))
        numeric = (values[0] - values[1]) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-12)
