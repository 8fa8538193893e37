"""ROME on the tiny models: the closed form it must satisfy, the direction C⁻¹k*, the edit itself,
restore after 100 stacked edits, SSS on the v* loss, and bad input."""
from __future__ import annotations

import pytest
import torch

from sss import EditRequest, SSSRegularizer, load_model
from sss.editors import ROME
from sss.stats import key_second_moment

pytestmark = pytest.mark.usefixtures("one_thread")

# The subject ends the prompt, so on a two-block random model the value at its last token decides
# the next token directly (a fact deep inside a longer prompt needs layers these models lack).
REQUEST = EditRequest("The language spoken by Danielle Darrieux", "English", subject="Danielle Darrieux")
FAST = dict(v_steps=25, v_weight_decay=0.0, clamp_norm_factor=100.0, stats_tokens=300, context_templates=[[5, 3]],
            progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_CACHE", str(tmp_path / "cache"))


def projection_of(model, layer):
    path = f"transformer.h.{layer}.mlp.c_proj" if model.config.model_type == "gpt2" else f"model.layers.{layer}.mlp.down_proj"
    return model.get_submodule(path)


def mapped(projection, keys):
    """The projection's output for ``keys`` (its bias included), whatever its layout."""
    return projection(keys)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("layer", [0, 1])
def test_the_update_maps_the_key_to_v_star_and_leaves_c_orthogonal_keys_alone(name, layer, cache):
    model, tokenizer = load_model(name, seed=0)
    editor = ROME(model, tokenizer, layers=layer, **FAST)
    projection = projection_of(model, layer)
    before = projection.weight.detach().clone()
    with editor.edit(REQUEST):
        (update,) = editor.updates
        after = projection.weight.detach().clone()
        # W' k = v*: the edited projection retrieves the optimised value for the prompt's key.
        torch.testing.assert_close(mapped(projection, update.key), update.target, rtol=1e-4, atol=1e-5)
        # A rank-one change along u = C⁻¹k* / ||C⁻¹k*|| (an independent solve of the cached C).
        C = key_second_moment(model, tokenizer, layer, tokens=300, progress=False)
        u = torch.linalg.solve(C, update.averaged_key.double())
        torch.testing.assert_close(update.u.double(), u / u.norm(), rtol=1e-5, atol=1e-7)
        delta = (after - before).double()
        singular = torch.linalg.svdvals(delta)
        assert singular[1] < 1e-5 * singular[0]  # rank one, up to float32 rounding of the weights
        # Keys orthogonal to k* in the C⁻¹ inner product (xᵀ C⁻¹ k* = 0) are mapped as before: the
        # change they see is float32 rounding of the weights, a millionth of what u itself sees.
        oriented = delta.T if update.transposed else delta  # [out, in]
        keys = torch.randn(16, update.key.shape[0], dtype=torch.float64)
        keys = keys - torch.outer(keys @ u, u) / (u @ u)
        keys = keys / keys.norm(dim=1, keepdim=True)
        unit = u / u.norm()
        assert (oriented @ keys.T).abs().max() < 1e-4 * (oriented @ unit).abs().max()
    assert torch.equal(projection.weight, before)


def test_the_edit_makes_the_model_say_the_target(tiny_gpt2, cache):
    model, tokenizer = tiny_gpt2
    ids = tokenizer(REQUEST.prompt, return_tensors="pt")
    target = tokenizer(" English", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        assert model(**ids).logits[0, -1].argmax() != target
    with ROME(model, tokenizer, **FAST).edit(REQUEST) as handle:
        steps = handle.info["history"][0]["steps"]
        assert steps[-1]["nll"] < steps[0]["nll"] - 1.0
        with torch.no_grad():
            assert model(**ids).logits[0, -1].argmax() == target


def test_restore_is_bit_exact_after_100_stacked_edits(tiny_llama, cache):
    model, tokenizer = tiny_llama
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    editor = ROME(model, tokenizer, **{**FAST, "v_steps": 2})
    subjects = [f"Person {i}" for i in range(100)]
    handles = [editor.edit(EditRequest(f"The home town of {s}", f"City{i}", subject=s))
               for i, s in enumerate(subjects)]
    assert not torch.equal(projection_of(model, editor.config.layers[0]).weight, before[
        f"model.layers.{editor.config.layers[0]}.mlp.down_proj.weight"])
    for handle in reversed(handles):
        handle.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_sss_applies_eq_10_to_the_value_loss(tiny_gpt2, cache):
    model, tokenizer = tiny_gpt2
    plain = ROME(model, tokenizer, **{**FAST, "v_steps": 4})
    with plain.edit(REQUEST):
        plain_update = plain.updates[0]
    regularized = ROME(model, tokenizer, regularizer=SSSRegularizer(C=0.5), **{**FAST, "v_steps": 4})
    with regularized.edit(REQUEST):
        update = regularized.updates[0]
    assert all(step["penalty"] > 0 for step in update.history)
    assert update.history[0]["nll"] == pytest.approx(plain_update.history[0]["nll"])  # same start, other path
    assert not torch.allclose(update.target, plain_update.target)


def test_a_request_without_its_subject_is_refused_before_anything_changes(tiny_gpt2, cache):
    # (A subject that is not in its prompt is refused by EditRequest itself.)
    model, tokenizer = tiny_gpt2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="ROME needs the request's subject"):
        ROME(model, tokenizer, **FAST).edit([REQUEST, EditRequest("The capital of France is", "Rome")])
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_a_block_out_of_range_is_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="layer 5 is out of range for a model with 2 blocks"):
        ROME(*tiny_gpt2, layers=5)
