"""Edit history you choose: caller-owned handles, commits, sessions, and saved edits that reload bit for bit."""
import copy
import gc
import weakref

import pytest
import torch

from sss import FTL, EditRequest, evaluate
from sss.editors import WeightEditHandle

FAST = dict(lr=5e-2, steps=2, norm_constraint=1.0, early_stop_loss=-1.0, progress=False)
FRANCE = EditRequest("The capital of France is", "Rome")
SPAIN = EditRequest("The capital of Spain is", "Paris")


def params_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same(model, expected):
    return all(torch.equal(p, expected[name]) for name, p in model.named_parameters())


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096  # resident pages; Linux pages are 4 KiB here


# ----------------------------------------------------------------------------------------------
# Ownership: dropped and committed handles


def test_a_dropped_handle_frees_its_undo_copy_and_keeps_its_edit(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    handle = FTL(model, tokenizer, **FAST).edit(FRANCE)
    edited = params_of(model)
    handle_ref = weakref.ref(handle)
    original_refs = [weakref.ref(t) for t in handle.originals.values()]
    del handle
    gc.collect()
    assert handle_ref() is None and all(ref() is None for ref in original_refs)
    assert same(model, edited)  # dropping is keeping


def test_a_dropped_later_handle_blocks_earlier_ones_clearly(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    first = editor.edit(FRANCE)
    editor.edit(SPAIN)  # handle dropped at once: that edit is permanent
    gc.collect()
    with pytest.raises(RuntimeError, match="handle was dropped"):
        first.restore()
    assert first.undo_bytes() == 0 and first.state == "blocked"


def test_commit_frees_the_undo_copy_and_refuses_restore(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    pristine = params_of(model)
    first = editor.edit(FRANCE)
    after_first = params_of(model)
    second = editor.edit(SPAIN)
    refs = [weakref.ref(t) for t in first.originals.values()]
    first.commit()
    gc.collect()
    assert first.originals == {} and all(ref() is None for ref in refs)
    with pytest.raises(RuntimeError, match="committed"):
        first.restore()
    second.restore()  # a later edit still undoes exactly itself
    assert same(model, after_first) and not same(model, pristine)


def test_committing_a_later_edit_blocks_the_earlier_ones(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    first, second = editor.edit(FRANCE), editor.edit(SPAIN)
    second.commit()
    with pytest.raises(RuntimeError, match="a later edit was committed"):
        first.restore()
    assert first.undo_bytes() == 0


def test_stacked_edits_are_still_undone_newest_first(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    pristine = params_of(model)
    first, second = editor.edit(FRANCE), editor.edit(SPAIN)
    with pytest.raises(RuntimeError, match="restore the 1 edit"):
        first.restore()
    second.restore()
    first.restore()
    assert same(model, pristine)


# ----------------------------------------------------------------------------------------------
# Sessions


@pytest.mark.usefixtures("one_thread")
def test_ten_thousand_session_edits_keep_one_copy_and_restore_exactly(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, lr=1e-3, steps=1, norm_constraint=1.0, early_stop_loss=-1.0, progress=False)
    touched = dict(model.named_parameters())
    one_copy = sum(touched[n].numel() * touched[n].element_size() for n in editor.parameter_names)
    requests = [EditRequest(prompt, target) for prompt, target in zip("abcdefghij", "klmnopqrst")]  # short: cheap
    pristine = params_of(model)
    with editor.session() as session:
        for i in range(100):
            session.edit(requests[i % 10])
        gc.collect()
        warm = resident_bytes()
        for i in range(100, 10_000):
            session.edit(requests[i % 10])
            if i % 2500 == 0:
                assert session.undo_bytes() == one_copy  # one copy, however many edits stack
        gc.collect()
        grown = resident_bytes() - warm
        assert session.edits == 10_000 and session.undo_bytes() == one_copy
        assert not same(model, pristine)
        session.restore()
    assert same(model, pristine)
    # Resident memory: the model and one copy were there after 100 edits; 9,900 more add at most
    # a small constant (allocator noise), never a copy per edit (that would be ~1 GB here).
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 9,900 edits"


def test_a_session_restores_on_exit_and_commit_keeps_it(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    pristine = params_of(model)
    with editor.session() as session:
        handle = session.edit(FRANCE)
        session.edit(SPAIN)
        with pytest.raises(RuntimeError, match="belongs to an edit session"):
            handle.restore()
    assert same(model, pristine)
    with editor.session() as session:
        session.edit(FRANCE)
        session.edit(SPAIN)
        session.commit()
        kept = params_of(model)
    assert same(model, kept) and not same(model, pristine) and session.undo_bytes() == 0


def test_an_edit_outside_the_session_is_refused_and_rolled_back(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    pristine = params_of(model)
    with editor.session() as session:
        session.edit(FRANCE)
        outside = editor.edit(SPAIN)
        with pytest.raises(RuntimeError, match="another edit was applied"):
            session.edit(FRANCE)
        outside.restore()
    assert same(model, pristine)


def test_a_failure_mid_sequence_restores_every_edit_of_the_protocol(tiny_gpt2, monkeypatch):
    model, tokenizer = tiny_gpt2
    pristine = params_of(model)
    editor = FTL(model, tokenizer, **FAST)
    calls = {"n": 0}
    real = editor.edit

    def edit_then_fail(requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(requests)

    monkeypatch.setattr(editor, "edit", edit_then_fail)
    with pytest.raises(KeyboardInterrupt):
        evaluate(editor, [FRANCE, SPAIN, FRANCE, SPAIN], mode="sequential", generate=False, progress=False)
    assert calls["n"] == 3 and same(model, pristine)


def test_sequential_evaluation_uses_a_session(tiny_gpt2, monkeypatch):
    model, tokenizer = tiny_gpt2
    pristine = params_of(model)
    editor = FTL(model, tokenizer, **FAST)
    sessions = []
    real = editor.session
    monkeypatch.setattr(editor, "session", lambda: sessions.append(real()) or sessions[-1])
    evaluate(editor, [FRANCE, SPAIN, FRANCE], mode="sequential", generate=False, progress=False)
    assert len(sessions) == 1 and sessions[0].edits == 3 and sessions[0].state == "restored"
    assert same(model, pristine)


# ----------------------------------------------------------------------------------------------
# Saved edits


def test_saves_with_dots_in_the_name_do_not_overwrite_each_other(tiny_gpt2, tmp_path):
    model, tokenizer = tiny_gpt2
    values = {}
    for name, lr in (("edit_c0.9", 5e-2), ("edit_c0.95", 1e-2)):
        with FTL(model, tokenizer, **{**FAST, "lr": lr}).edit(FRANCE) as handle:
            assert handle.save(tmp_path / name) == tmp_path / f"{name}.safetensors"
            values[name] = {n: t.clone() for n, t in handle.edited.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit_c0.9.json", "edit_c0.9.safetensors",
                                                          "edit_c0.95.json", "edit_c0.95.safetensors"]
    for name, expected in values.items():
        with WeightEditHandle.load(tmp_path / name, model) as loaded:
            assert all(torch.equal(t, expected[n]) for n, t in loaded.edited.items())


def test_save_then_load_is_bit_exact(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    pristine = params_of(model)
    handle = FTL(model, tokenizer, **FAST).edit(FRANCE)
    edited = params_of(model)
    handle.save(tmp_path / "edit")
    handle.restore()
    loaded = WeightEditHandle.load(tmp_path / "edit.safetensors", model)
    assert same(model, edited)  # bit for bit, not within a tolerance
    assert loaded.requests == [FRANCE]
    loaded.restore()
    assert same(model, pristine)


def test_an_edit_cannot_be_saved_after_a_later_one(tiny_gpt2, tmp_path):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FAST)
    first = editor.edit(FRANCE)
    with editor.edit(SPAIN):
        with pytest.raises(RuntimeError, match="later edits changed the model"):
            first.save(tmp_path / "edit")


def test_a_damaged_or_foreign_saved_edit_is_refused_naming_the_file(tiny_gpt2, tmp_path):
    model, tokenizer = tiny_gpt2
    with FTL(model, tokenizer, **FAST).edit(FRANCE) as handle:
        path = handle.save(tmp_path / "edit")
    touched = FTL(model, tokenizer, **FAST).parameter_names[0]
    other = copy.deepcopy(model)  # the same shapes, one tensor's weights different
    with torch.no_grad():
        other.get_parameter(touched).add_(1e-3)
    before = params_of(other)
    with pytest.raises(ValueError, match="edit.safetensors") as refused:
        WeightEditHandle.load(path, other)
    assert f"differing tensors: {touched}" in str(refused.value) and same(other, before)

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"edit\.safetensors has SHA-256 .* the file is damaged"):
        WeightEditHandle.load(path, model)
