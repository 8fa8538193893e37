"""MEMIT on the tiny models: the batch solve against a direct least-squares solution, the normal
equations each edited block satisfies, a batch edit, restore after 100 stacked edits, bad input."""
from __future__ import annotations

import pytest
import torch

from sss import EditRequest, load_model
from sss.editors import MEMIT
from sss.editors.memit import spread_update
from sss.stats import key_second_moment

pytestmark = pytest.mark.usefixtures("one_thread")

REQUESTS = [EditRequest("The language spoken by Danielle Darrieux", "English", subject="Danielle Darrieux"),
            EditRequest("The city of the Eiffel Tower", "Rome", subject="the Eiffel Tower")]
FAST = dict(v_steps=25, v_weight_decay=0.0, clamp_norm_factor=100.0, stats_tokens=300, context_templates=[[5, 1]],
            progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("n, d_k, d_out, weight", [(1, 8, 5, 1.0), (7, 12, 6, 0.3), (30, 10, 4, 1e3)])
def test_the_batch_solve_equals_a_direct_least_squares_solution(n, d_k, d_out, weight):
    generator = torch.Generator().manual_seed(n)
    keys = torch.randn(n, d_k, generator=generator, dtype=torch.float64)
    residuals = torch.randn(n, d_out, generator=generator, dtype=torch.float64)
    factor = torch.randn(d_k, 3 * d_k, generator=generator, dtype=torch.float64)
    moment = factor @ factor.T / (3 * d_k)  # a second moment: symmetric positive definite
    change = spread_update(keys, residuals, moment, weight)
    # min ||Δ Kᵀ - Rᵀ||² + λ ||Δ L||² with C = L Lᵀ: an ordinary least-squares problem in Δᵀ.
    lower = torch.linalg.cholesky(moment)
    system = torch.cat([keys, weight ** 0.5 * lower.T])
    wanted = torch.cat([residuals, torch.zeros(d_k, d_out, dtype=torch.float64)])
    direct = torch.linalg.lstsq(system, wanted).solution.T
    torch.testing.assert_close(change, direct, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_each_block_solves_its_normal_equations_and_the_gap_shrinks(name, cache):
    model, tokenizer = load_model(name, seed=0)
    editor = MEMIT(model, tokenizer, layers=[0, 1], mom2_update_weight=0.5, **FAST)
    # The statistics of the unedited model (block 1's keys change once block 0 is edited).
    moments = {layer: key_second_moment(model, tokenizer, layer, tokens=300, progress=False) for layer in (0, 1)}
    with editor.edit(REQUESTS):
        assert [solve["layer"] for solve in editor.solves] == [0, 1]
        for solve in editor.solves:
            C = moments[solve["layer"]]
            K, R, change = solve["keys"].double(), solve["residuals"].double(), solve["change"]
            lhs = change @ (0.5 * C + K.T @ K)
            torch.testing.assert_close(lhs, R.T @ K, rtol=1e-6, atol=1e-9)
        # The first block takes half of the gap, the last all that is left: the gap the last block
        # saw is smaller than the first's (the first block's change already closed part of it).
        first, last = editor.solves
        assert (last["residuals"].norm(dim=1) < 2 * first["residuals"].norm(dim=1)).all()


def test_a_batch_edit_makes_the_model_say_every_target(tiny_gpt2, cache):
    model, tokenizer = tiny_gpt2
    targets = [tokenizer(" " + r.target_new, add_special_tokens=False)["input_ids"][0] for r in REQUESTS]

    def answers():
        with torch.no_grad():
            return [int(model(**tokenizer(r.prompt, return_tensors="pt")).logits[0, -1].argmax()) for r in REQUESTS]

    assert answers() != targets
    with MEMIT(model, tokenizer, **FAST).edit(REQUESTS):
        assert answers() == targets


def test_restore_is_bit_exact_after_100_stacked_edits(tiny_gpt2, cache):
    model, tokenizer = tiny_gpt2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    editor = MEMIT(model, tokenizer, layers=[0, 1], **{**FAST, "v_steps": 2})
    handles = [editor.edit(EditRequest(f"The home town of Person {i}", f"City{i}", subject=f"Person {i}"))
               for i in range(100)]
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())
    for handle in reversed(handles):
        handle.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_a_request_without_its_subject_is_refused_before_anything_changes(tiny_gpt2, cache):
    model, tokenizer = tiny_gpt2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="MEMIT needs the request's subject"):
        MEMIT(model, tokenizer, **FAST).edit(REQUESTS + [EditRequest("The capital of France is", "Rome")])
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_blocks_out_of_range_are_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="layer 4 is out of range for a model with 2 blocks"):
        MEMIT(*tiny_gpt2, layers=[1, 4])
