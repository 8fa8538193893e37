"""FT-L edits trained together (FTL.edit_each, sss.editors.ftl.grouped) equal editing each alone."""
import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer, evaluate, load_model
from sss.editors.ftl.grouped import train_each, unsupported_reason

REQUESTS = [EditRequest("The capital of France is", "Berlin"),
            EditRequest("Danielle Darrieux's mother tongue is", "English"),
            EditRequest("The Eiffel Tower is in the city of", "Rome"),
            EditRequest("Apple was founded by", "Bill Gates"),
            EditRequest("Paris is the capital of", "Italy")]
# Thresholds between the requests' loss curves (lr 5e-2, radius 1): some requests stop after one
# step, some after several, some never, so the per-request early stop is exercised.
EARLY_STOP = {"tiny-gpt2": 9.85, "tiny-llama": 9.75}


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def float64_model(request):
    model, tokenizer = load_model(request.param)
    return request.param, model.double(), tokenizer


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def edited_alone(editor, requests):
    results = []
    for request in requests:
        with editor.edit(request) as handle:
            results.append(({n: v.clone() for n, v in handle.edited.items()}, handle.info["history"]))
    return results


def edited_together(editor, requests, at_once):
    results = []
    for handle in editor.edit_each(requests, at_once=at_once):
        results.append(({n: v.clone() for n, v in handle.edited.items()}, handle.info["history"]))
        handle.restore()
    return results


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
@pytest.mark.parametrize("radius", [1.0, 2e-3])
def test_each_edit_equals_editing_it_alone(float64_model, objective, radius):
    name, model, tokenizer = float64_model
    editor = FTL(model, tokenizer, lr=5e-2, steps=15, norm_constraint=radius, early_stop_loss=EARLY_STOP[name],
                 objective=objective, progress=False)
    pristine = weights(model)
    alone = edited_alone(editor, REQUESTS)
    together = edited_together(editor, REQUESTS, at_once=3)  # a group of three, then one of two
    for (values, history), (ref_values, ref_history) in zip(together, alone):
        assert len(history) == len(ref_history)
        for got, want in zip(history, ref_history):
            assert got["step"] == want["step"] and got["edit_loss"] == pytest.approx(want["edit_loss"], abs=1e-12)
        for key, want in ref_values.items():
            torch.testing.assert_close(values[key], want, rtol=0, atol=1e-12)
            assert not torch.equal(want, pristine[key])  # every edit moved the weights
    if radius == 1.0:  # the loose ball: early stopping decides where the edits end
        assert len({len(history) for _, history in alone}) > 1, "no request stopped early at another step"
    else:  # the tight ball: the clamp decides
        assert any((values[k] - pristine[k]).abs().max() == pytest.approx(radius) for values, _ in alone for k in values)
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())


def test_training_together_leaves_the_model_and_its_flags_as_they_were(tiny_llama, monkeypatch):
    model, tokenizer = tiny_llama
    editor = FTL(model, tokenizer, steps=3, progress=False)
    pristine, flags = weights(model), {n: p.requires_grad for n, p in model.named_parameters()}
    trained = train_each(editor, REQUESTS[:2])
    assert [set(values) for values, _ in trained] == [set(editor.parameter_names)] * 2
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch.optim.Adam, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_each(editor, REQUESTS[:2])
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_each_edit_must_be_restored_before_the_next_and_closing_restores(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, steps=2, progress=False)
    pristine = weights(model)
    edits = editor.edit_each(REQUESTS[:3], at_once=3)
    next(edits)  # applied, not restored
    with pytest.raises(RuntimeError, match="restore each edit before taking the next"):
        next(edits)
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())  # undone, not left applied
    edits = editor.edit_each(REQUESTS[:4], at_once=2)
    next(edits).restore()
    next(edits)  # the group's last edit, left applied
    with pytest.raises(RuntimeError, match="restore each edit"):  # also where the next group would train
        next(edits)
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())
    edits = editor.edit_each(REQUESTS[:3], at_once=3)
    first = next(edits)
    assert not torch.equal(first.edited[editor.parameter_names[0]], pristine[editor.parameter_names[0]])
    edits.close()  # e.g. the caller's loop broke off
    assert first.restored and all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())


def test_edits_that_cannot_train_together_are_made_one_at_a_time(tiny_llama):
    model, tokenizer = tiny_llama
    regularized = FTL(model, tokenizer, steps=3, regularizer=SSSRegularizer(C=0.9), progress=False)
    assert "regularizer" in unsupported_reason(regularized)
    with pytest.raises(ValueError, match="cannot be trained together: a regularizer"):
        train_each(regularized, REQUESTS[:2])
    alone, together = edited_alone(regularized, REQUESTS[:2]), edited_together(regularized, REQUESTS[:2], at_once=2)
    for (values, _), (ref, _) in zip(together, alone):
        assert all(torch.equal(values[k], ref[k]) for k in ref)  # the same path, bit for bit
    assert "more than one block" in unsupported_reason(FTL(model, tokenizer, layers=(0, 1), progress=False))
    with pytest.raises(ValueError, match="at_once must be a positive integer"):
        next(FTL(model, tokenizer, progress=False).edit_each(REQUESTS[:2], at_once=0))


def test_evaluate_with_edits_at_once_gives_the_one_at_a_time_records(tiny_llama):
    model, tokenizer = tiny_llama
    editor = FTL(model, tokenizer, steps=4, progress=False)
    pristine = weights(model)
    alone = evaluate(editor, REQUESTS, "single", generate=False, progress=False)
    together = evaluate(editor, REQUESTS, "single", generate=False, progress=False, edits_at_once=4)
    assert together.settings["edits_at_once"] == 4 and "edits_at_once" not in alone.settings
    # The weights differ by float rounding only (float32 here), too little to change a measured answer.
    assert [(r["post"], r["probes"]) for r in together.records] == [(r["post"], r["probes"]) for r in alone.records]
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="edits_at_once only applies to mode='single'"):
        evaluate(editor, REQUESTS, "sequential", edits_at_once=2, progress=False)
