"""FT-L on the tiny models: the edit takes, stays inside its constraint, and restores bit for bit."""
import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer
from sss.data import encode_prompts
from sss.editors import WeightEditHandle
from sss.editors.ftl import FTLConfig
from sss.models import mlp_out_path, second_order_attention

# A random model needs a larger step than GPT-2 XL's defaults to move its argmax.
FAST = dict(lr=5e-2, steps=25, norm_constraint=1.0, progress=False)


def greedy(model, tokenizer, prompt, n):
    batch = encode_prompts(tokenizer, [prompt])
    out = model.generate(**batch.model_inputs, max_new_tokens=n, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, batch.input_ids.shape[1]:].tolist()


def target_ids(tokenizer, target):
    return tokenizer(" " + target, add_special_tokens=False)["input_ids"]


def state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same(model, saved):
    for name, p in model.named_parameters():
        assert torch.equal(p, saved[name]), name


def test_target_new_objective_makes_the_multi_token_target_the_greedy_continuation(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    request = EditRequest("The capital of France is", "Rome and Milan")
    ids = target_ids(tokenizer, request.target_new)
    assert len(ids) == 3 and greedy(model, tokenizer, request.prompt, 3) != ids
    before = state(model)
    handle = FTL(model, tokenizer, objective="target_new", **FAST).edit(request)
    assert greedy(model, tokenizer, request.prompt, 3) == ids
    handle.restore()
    assert_same(model, before)


def test_prompt_last_objective_moves_the_next_token(tiny_llama):
    model, tokenizer = tiny_llama
    request = EditRequest("The capital of France is", "Rome")
    first = target_ids(tokenizer, "Rome")[0]
    assert greedy(model, tokenizer, request.prompt, 1) != [first]
    with FTL(model, tokenizer, objective="prompt_last", **FAST).edit(request):
        assert greedy(model, tokenizer, request.prompt, 1) == [first]


def test_only_the_mlp_output_projection_changes_and_within_the_radius(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    before = state(model)
    radius = 2e-3
    editor = FTL(model, tokenizer, objective="target_new", lr=1e-2, steps=5, norm_constraint=radius, layers=(1,),
                 progress=False)
    path = mlp_out_path(model, 1)
    assert editor.parameter_names == [f"{path}.weight", f"{path}.bias"]
    handle = editor.edit(EditRequest("The capital of France is", "Rome"))
    for name, p in model.named_parameters():
        if name in editor.parameter_names:
            change = (p - before[name]).abs().max()
            assert 0 < change <= radius + 1e-7, name
        else:
            assert torch.equal(p, before[name]), name
    assert all(p.requires_grad for p in model.parameters())  # flags put back
    handle.restore()
    assert_same(model, before)


def test_stacked_edits_restore_in_reverse_order(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, objective="target_new", **FAST)
    original = state(model)
    first = editor.edit(EditRequest("The capital of France is", "Rome"))
    after_first = state(model)
    second = editor.edit(EditRequest("The capital of Spain is", "Lisbon"))
    assert not torch.equal(state(model)[editor.parameter_names[0]], after_first[editor.parameter_names[0]])
    with pytest.raises(RuntimeError, match="newest first"):
        first.restore()
    second.restore()
    assert_same(model, after_first)
    first.restore()
    assert_same(model, original)
    with pytest.raises(RuntimeError, match="already been restored"):
        first.restore()


def test_batch_edit_changes_every_request(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    requests = [EditRequest("The capital of France is", "Rome"), EditRequest("My favourite colour is", "green")]
    handle = FTL(model, tokenizer, objective="target_new", **FAST).edit(requests)
    for request in requests:
        assert greedy(model, tokenizer, request.prompt, 1) == target_ids(tokenizer, request.target_new)[:1]
    assert len(handle.requests) == 2
    handle.restore()


def test_early_stop_when_the_loss_is_small(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    # A random model's loss starts near log(vocab) ~ 10.8 and cannot go far below it.
    with FTL(model, tokenizer, objective="target_new", lr=5e-2, steps=100, norm_constraint=10.0, progress=False,
             early_stop_loss=10.3).edit(EditRequest("The capital of France is", "Rome")) as handle:
        history = handle.info["history"]
    assert 1 < len(history) < 100 and history[-1]["edit_loss"] < 10.3
    assert all(h["edit_loss"] >= 10.3 for h in history[:-1])


def independent_eq10(model, tokenizer, prompt, target, objective, where, C):
    """Eq. 10 for one request on the full model, written from the paper, not from sss.losses:
    ``(1 - C) * L_e + C * mean_i ||dJ/dx_i||^2`` over the prompt tokens, J the mean target NLL
    under teacher forcing, x the input embeddings or the LM head's input. Returns (L_e, SSS, loss)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(" " + target)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    p, t = len(prompt_ids), len(target_ids)
    with second_order_attention(model):
        if where == "input_embeds":
            x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=x).logits[0]
        else:  # the LM head's input: the backbone's last hidden state, after the final norm
            x = model.model(input_ids=ids).last_hidden_state
            logits = model.get_output_embeddings()(x)[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        labels = torch.tensor(target_ids)
        J = -log_probs[p - 1 + torch.arange(t), labels].mean()
        L_e = J if objective == "target_new" else -log_probs[p - 1, labels].mean()
        (grad,) = torch.autograd.grad(J, x, create_graph=True)
        sss = grad[0, :p].double().pow(2).sum(-1).mean()
    return L_e, sss, (1 - C) * L_e + C * sss


@pytest.mark.parametrize("objective, where", [("target_new", "input_embeds"), ("prompt_last", "last_hidden")])
def test_a_regularized_step_descends_eq10(tiny_llama, objective, where):
    """FT-L's first step with SSS is Adam's first step on Eq. 10, ``-lr * g / (|g| + eps)``, with g
    the gradient of an independently written Eq. 10 (FT-L computes it through its cached step,
    and for prompt_last with last_hidden through J's first-target shortcut)."""
    model, tokenizer = tiny_llama
    prompt, target, C, lr = "The capital of France is", "the city of Rome", 0.7, 1e-3
    editor = FTL(model, tokenizer, objective=objective, regularizer=SSSRegularizer(C=C, target=where), lr=lr,
                 steps=1, norm_constraint=1.0, early_stop_loss=-1.0, progress=False)
    (name,) = [n for n in editor.parameter_names if n.endswith("weight")]
    weight = model.get_parameter(name)
    L_e, sss, loss = independent_eq10(model, tokenizer, prompt, target, objective, where, C)
    (g,) = torch.autograd.grad(loss, weight)
    assert sss.item() > 0 and g.abs().max() > 0
    with editor.edit(EditRequest(prompt, target)) as handle:
        (step,) = handle.info["history"]
        delta = handle.delta[name]
    assert step["edit_loss"] == pytest.approx(L_e.item(), rel=1e-5)
    assert step["penalty"] == pytest.approx(sss.item(), rel=1e-4)
    g = g.double()
    torch.testing.assert_close(delta.double(), -lr * g / (g.abs() + 1e-8), rtol=0, atol=lr * 1e-3)


def test_delta_save_and_load_reproduce_the_edit(tiny_gpt2, tmp_path):
    model, tokenizer = tiny_gpt2
    original = state(model)
    handle = FTL(model, tokenizer, objective="target_new", **FAST).edit(EditRequest("The capital of France is", "Rome"))
    edited = state(model)
    handle.save(tmp_path / "edit")
    handle.restore()
    loaded = WeightEditHandle.load(tmp_path / "edit", model)
    for name, p in model.named_parameters():
        assert torch.allclose(p, edited[name], atol=1e-6), name
    assert loaded.requests[0].target_new == "Rome"
    loaded.restore()
    assert_same(model, original)


def test_loading_a_delta_into_another_architecture_is_refused(tiny_gpt2, tiny_llama, tmp_path):
    model, tokenizer = tiny_gpt2
    with FTL(model, tokenizer, **FAST).edit(EditRequest("The capital of France is", "Rome")) as handle:
        handle.save(tmp_path / "edit")
    with pytest.raises(ValueError, match="not a parameter of this model"):
        WeightEditHandle.load(tmp_path / "edit", tiny_llama[0])


def test_edit_rolls_nothing_back_on_bad_input(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    with pytest.raises(ValueError, match="target_new is empty"):
        editor.edit(EditRequest("The capital of France is", ""))
    with pytest.raises(ValueError, match="prompt is empty"):
        editor.edit(EditRequest("", "Rome"))
    with pytest.raises(ValueError, match="longer than the model's context of 256 tokens"):
        editor.edit(EditRequest("word " * 300, "Rome"))
    with pytest.raises(ValueError, match="at least one EditRequest"):
        editor.edit([])


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="everything"), "unknown FT-L objective"),
    (dict(steps=0), "steps must be an integer of at least 1"),
    (dict(learning_rate=1.0), "unknown FTL option"),
    (dict(layers=(9,)), "layer 9 is out of range"),
    (dict(regularizer="sss"), "regularizer must be a SparsityRegularizer"),
])
def test_bad_options(tiny_gpt2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FTL(*tiny_gpt2, **kwargs)


def test_architecture_defaults(tiny_gpt2, tiny_llama):
    assert FTL(*tiny_gpt2).config.layers == (0,) and FTL(*tiny_gpt2).config.norm_constraint == 5e-4
    config = FTL(*tiny_llama).config
    assert config.norm_constraint == 5e-3
    assert FTLConfig().layers is None  # the dataclass itself stays architecture-neutral
