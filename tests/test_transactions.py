"""An edit is a transaction: it returns a handle, or leaves the model bit for bit as it was."""
import random

import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer
from sss.editors.ftl import editor as ft

STEPS = 6
FAST = dict(lr=5e-2, steps=STEPS, norm_constraint=1.0, early_stop_loss=-1.0, progress=False)
REQUEST = EditRequest("The capital of France is", "Rome")


def full_state(model):
    """Every parameter and buffer, plus the flags an edit may touch."""
    tensors = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    grads = {name: p.grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    return tensors, flags, grads, modes


def assert_unchanged(model, before):
    tensors, flags, grads, modes = before
    now = dict([*model.named_parameters(), *model.named_buffers()])
    assert now.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(now[name], tensor), name
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is grads[name] for name, p in model.named_parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes


def fail_on_call(k, error):
    """A wrapper that lets ``k - 1`` calls through and raises ``error`` on the ``k``-th."""
    calls = {"n": 0}

    def wrap(function):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == k:
                raise error
            return function(*args, **kwargs)
        return wrapped
    return wrap, calls


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, MemoryError])
def test_an_interrupted_loss_leaves_the_model_as_it_was(tiny_gpt2, monkeypatch, seed, error):
    model, tokenizer = tiny_gpt2
    k = random.Random(seed).randint(2, STEPS)  # after at least one optimiser step has moved the weights
    wrap, calls = fail_on_call(k, error("injected"))
    monkeypatch.setattr(ft, "edit_loss", wrap(ft.edit_loss))
    before = full_state(model)
    with pytest.raises(error, match="injected"):
        FTL(model, tokenizer, **FAST).edit(REQUEST)
    assert calls["n"] == k
    assert_unchanged(model, before)


@pytest.mark.parametrize("seed", range(2))
def test_an_interrupted_optimiser_step_leaves_the_model_as_it_was(tiny_llama, monkeypatch, seed):
    model, tokenizer = tiny_llama
    k = random.Random(seed).randint(2, STEPS)
    wrap, calls = fail_on_call(k, KeyboardInterrupt())
    monkeypatch.setattr(torch.optim.Adam, "step", wrap(torch.optim.Adam.step))
    before = full_state(model)
    with pytest.raises(KeyboardInterrupt):
        FTL(model, tokenizer, **FAST).edit(REQUEST)
    assert calls["n"] == k
    assert_unchanged(model, before)


def test_an_interrupted_regularised_edit_leaves_the_model_as_it_was(tiny_llama, monkeypatch):
    model, tokenizer = tiny_llama
    regularizer = SSSRegularizer()
    wrap, calls = fail_on_call(3, KeyboardInterrupt())
    monkeypatch.setattr(regularizer, "combine", wrap(regularizer.combine))
    before = full_state(model)
    with pytest.raises(KeyboardInterrupt):
        FTL(model, tokenizer, regularizer=regularizer, **FAST).edit(REQUEST)
    assert calls["n"] == 3
    assert_unchanged(model, before)


def test_train_mode_and_frozen_flags_are_kept(tiny_gpt2, monkeypatch):
    model, tokenizer = tiny_gpt2
    model.train()
    model.get_submodule("transformer.h.1").eval()
    model.get_parameter("transformer.wte.weight").requires_grad_(False)
    wrap, _ = fail_on_call(2, KeyboardInterrupt())
    monkeypatch.setattr(ft, "edit_loss", wrap(ft.edit_loss))
    before = full_state(model)
    with pytest.raises(KeyboardInterrupt):
        FTL(model, tokenizer, **FAST).edit(REQUEST)
    assert_unchanged(model, before)


def test_a_failed_edit_on_top_of_another_keeps_the_first_restorable(tiny_gpt2, monkeypatch):
    model, tokenizer = tiny_gpt2
    pristine = full_state(model)[0]
    editor = FTL(model, tokenizer, **FAST)
    first = editor.edit(REQUEST)
    after_first = full_state(model)
    wrap, _ = fail_on_call(4, KeyboardInterrupt())
    monkeypatch.setattr(ft, "edit_loss", wrap(ft.edit_loss))
    with pytest.raises(KeyboardInterrupt):
        editor.edit(EditRequest("The capital of Spain is", "Paris"))
    assert_unchanged(model, after_first)
    monkeypatch.undo()
    first.restore()  # the failed edit left nothing on the stack
    assert all(torch.equal(t, pristine[n]) for n, t in [*model.named_parameters(), *model.named_buffers()])


def test_a_completed_edit_still_changes_the_model(tiny_gpt2):
    # The transaction must not undo a successful edit.
    model, tokenizer = tiny_gpt2
    before = full_state(model)[0]
    handle = FTL(model, tokenizer, **FAST).edit(REQUEST)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and set(changed) == set(handle.originals)


# ----------------------------------------------------------------------------------------------
# MEND and SERAC: the generic transaction of Editor.edit


IN_PLACE_WRITES = ("copy_", "sub_", "add_", "addmm_")  # however MEND writes the new weights


def patch_in_place_writes(monkeypatch, wrap):
    for method in IN_PLACE_WRITES:
        monkeypatch.setattr(torch.Tensor, method, wrap(getattr(torch.Tensor, method)))


def writes_of_one_edit(editor, request, monkeypatch):
    """How many in-place tensor writes one edit makes (the points where it may be interrupted)."""
    wrap, calls = fail_on_call(0, None)  # never fails: only counts
    patch_in_place_writes(monkeypatch, wrap)
    handle = editor.edit(request)
    monkeypatch.undo()
    handle.restore()
    return calls["n"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_mend_edit_leaves_the_model_as_it_was(tiny_gpt2, monkeypatch, seed, error):
    from sss import MEND

    model, tokenizer = tiny_gpt2
    editor = MEND(model, tokenizer, rank=8, init_edit_lr=1e-1, progress=False)
    editor.init_statistics([REQUEST, EditRequest("The capital of Spain is", "Paris")])
    writes = writes_of_one_edit(editor, REQUEST, monkeypatch)
    assert writes >= len(editor.weight_names) >= 2
    # A random write after the first one, so that some weights were already overwritten.
    k = random.Random(seed).randint(writes - len(editor.weight_names) + 2, writes)
    wrap, calls = fail_on_call(k, error("injected"))
    patch_in_place_writes(monkeypatch, wrap)
    before = full_state(model)
    with pytest.raises(error, match="injected"):
        editor.edit(REQUEST)
    monkeypatch.undo()
    assert calls["n"] >= k
    assert_unchanged(model, before)
    with editor.edit(REQUEST) as handle:  # and the next edit is an ordinary one
        assert handle.state == "applied"
    assert_unchanged(model, before)


def memory_state(editor):
    memory = editor.memory
    keys = memory.keys_for(editor.classifier)
    return ([(e.id, e.text, e.request) for e in memory], memory._next_id, None if keys is None else keys.clone())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("where", ["entry", "keys"])
def test_an_interrupted_serac_edit_leaves_memory_and_models_as_they_were(tiny_gpt2, monkeypatch, seed, where):
    from sss.editors.serac import memory as memory_module
    from test_serac import BagOfWordsClassifier, serac

    editor = serac(tiny_gpt2, BagOfWordsClassifier())
    editor.edit([EditRequest("Danielle Darrieux speaks", "English")])  # a memory with something in it
    requests = [EditRequest(f"Fact {i} is", f"value {i}") for i in range(4)]
    k = random.Random(seed).randint(2, len(requests))
    wrap, calls = fail_on_call(k if where == "entry" else 1, KeyboardInterrupt("injected"))
    if where == "entry":  # half of the batch is already appended when it fails
        monkeypatch.setattr(memory_module, "edit_text", wrap(memory_module.edit_text))
    else:  # every entry is appended, its key is being computed
        monkeypatch.setattr(editor.classifier, "keys", wrap(editor.classifier.keys))
    before, memory_before = full_state(editor.model), memory_state(editor)
    with pytest.raises(KeyboardInterrupt):
        editor.edit(requests)
    monkeypatch.undo()
    assert_unchanged(editor.model, before)
    entries, next_id, keys = memory_state(editor)
    assert (entries, next_id) == memory_before[:2] and torch.equal(keys, memory_before[2])
    handle = editor.edit(requests)  # ids continue where they were: nothing of the failed edit remains
    assert handle.entry_ids == list(range(next_id, next_id + len(requests)))


# ----------------------------------------------------------------------------------------------
# Edits that would silently be wrong, and two threads on one model


def test_an_edit_that_writes_a_non_finite_weight_is_refused_and_undone(tiny_gpt2, monkeypatch):
    model, tokenizer = tiny_gpt2
    step = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):  # as float16 overflow would: one NaN in the trained weight
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    before = full_state(model)
    with pytest.raises(ValueError, match="non-finite values .* the edit was undone"):
        FTL(model, tokenizer, **FAST).edit(REQUEST)
    assert_unchanged(model, before)


def test_a_second_thread_editing_the_same_model_is_refused_while_the_first_finishes(tiny_gpt2, monkeypatch):
    import threading

    model, tokenizer = tiny_gpt2
    inside, release = threading.Event(), threading.Event()
    loss = ft.edit_loss

    def slow_loss(*args, **kwargs):  # the first thread waits inside its edit until the second has tried
        inside.set()
        release.wait(timeout=30)
        return loss(*args, **kwargs)

    monkeypatch.setattr(ft, "edit_loss", slow_loss)
    before = full_state(model)
    results = {}

    def first():
        with FTL(model, tokenizer, **FAST).edit(REQUEST) as handle:
            results["first"] = handle.state

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(timeout=30)
    with pytest.raises(RuntimeError, match="another thread is editing this model"):
        FTL(model, tokenizer, **FAST).edit(EditRequest("Water is made of", "fire"))
    release.set()
    thread.join(timeout=60)
    assert results == {"first": "applied"}  # the first edit completed, then its with block restored it
    assert_unchanged(model, before)
    with FTL(model, tokenizer, **FAST).edit(REQUEST) as handle:  # and the model is free again
        assert handle.state == "applied"
