"""Ctrl-C at *every* line of an edit's code path leaves nothing behind.

A tracer counts the lines sss's own code executes during one edit (or edit-session step) and, in
run k, sends a real SIGINT to this process at the k-th of them, for every k. The signal goes
through the operating system (``signal.raise_signal``), so it meets whatever handler and signal
mask the code has installed at that moment, exactly as a user's Ctrl-C would. Afterwards the
model must compute the unedited model's outputs bit for bit, with every parameter, flag, train
mode, hook registry and instance attribute as before; where the edit completed, its handle must
be there and restore it.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import sss
from sss import FTL, EditRequest

SSS_ROOT = str(Path(sss.__file__).resolve().parent)
REQUEST = EditRequest("The capital of France is", "Rome")
PROBE = "The Eiffel Tower stands in"
HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")

pytestmark = pytest.mark.usefixtures("one_thread")


class LineInterrupter:
    """Raise SIGINT at the ``k``-th line executed in sss's package (``k = 0``: only count)."""

    def __init__(self, k: int):
        self.k, self.count, self.where = k, 0, None
        self.files = []  # the file of each line counted (k = 0 only)

    def on_call(self, frame, event, arg):
        return self.on_line if frame.f_code.co_filename.startswith(SSS_ROOT) else None

    def on_line(self, frame, event, arg):
        if event == "line":
            self.count += 1
            if not self.k:
                self.files.append(frame.f_code.co_filename)
            elif self.count == self.k:
                self.where = f"{Path(frame.f_code.co_filename).relative_to(SSS_ROOT)}:{frame.f_lineno}"
                signal.raise_signal(signal.SIGINT)
        return self.on_line

    def run(self, action):
        """``(result or None, interrupted)``: ``action()`` under the tracer."""
        result, interrupted = None, False
        sys.settrace(self.on_call)
        try:
            try:
                result = action()
            finally:
                sys.settrace(None)
            for _ in range(3):  # a signal still pending is handled at the next bytecodes
                pass
        except KeyboardInterrupt:
            interrupted = True
        return result, interrupted


def footprint(model):
    """Everything of the model an edit might leave behind, besides tensor values."""
    modules = {}
    for name, module in model.named_modules():
        hooks = {h: dict(getattr(module, h)) for h in HOOK_DICTS if hasattr(module, h)}
        modules[name] = (set(module.__dict__), {h: list(d) for h, d in hooks.items()}, module.training)
    flags = {name: (p.requires_grad, p.grad is None) for name, p in model.named_parameters()}
    return modules, flags


def tensors(model):
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def probe_logits(model, tokenizer):
    ids = tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.clone()


def assert_as_before(model, tokenizer, before):
    values, shape, logits = before
    now = tensors(model)
    assert now.keys() == values.keys()
    changed = [name for name in values if not torch.equal(now[name], values[name])]
    assert not changed, f"weights left edited: {changed[:3]}"
    (modules, flags), (modules_before, flags_before) = footprint(model), shape
    assert [n for n in modules if modules[n] != modules_before.get(n)] == [], "a hook, attribute or mode left behind"
    assert {n: f for n, f in flags.items() if f != flags_before[n]} == {}, "requires_grad or .grad left changed"
    assert torch.equal(probe_logits(model, tokenizer), logits)


EVERY_LINE = os.environ.get("SSS_EVERY_LINE") == "1"
# The commit points of every edit: each of their lines is interrupted in every run of the suite.
CRITICAL = tuple(str(Path(SSS_ROOT, "editors", "core", name)) for name in
                 ("interrupts.py", "editor.py", "session.py", "handles.py"))


def lines_to_interrupt(files, limit):
    """Every line when ``SSS_EVERY_LINE=1`` (by hand: minutes); otherwise every line of the edit's
    commit points (:data:`CRITICAL`) and an even sample of the others, about ``limit`` in all,
    so the suite stays short."""
    everything = range(1, len(files) + 1)
    if EVERY_LINE:
        return list(everything)
    critical = {k for k in everything if files[k - 1] in CRITICAL}
    rest = [k for k in everything if k not in critical]
    room = max(limit - len(critical), 40)
    return sorted(critical | set(rest[::max(1, len(rest) // room)]) | {len(files)})


def every_line(model, tokenizer, action, finish, limit=150, after_interrupt=lambda: None):
    """Interrupt ``action`` at each line it executes; ``finish(result)`` undoes a completed one,
    ``after_interrupt()`` what an interrupted one leaves to its caller to undo (a session).

    Returns the number of lines and how many runs were interrupted and how many completed (an interrupt that lands after
    the edit's last line, or one the code handles by undoing a finished edit, may leave either)."""
    before = (tensors(model), footprint(model), probe_logits(model, tokenizer))
    counter = LineInterrupter(0)
    result, _ = counter.run(action)
    finish(result)
    lines = counter.count
    assert lines > 20, "the tracer saw none of sss's code"
    outcomes = {"interrupted": 0, "completed": 0}
    ks = lines_to_interrupt(counter.files, limit)
    for k in ks:
        tracer = LineInterrupter(k)
        result, interrupted = tracer.run(action)
        if interrupted:
            assert result is None
            outcomes["interrupted"] += 1
            after_interrupt()
        else:
            outcomes["completed"] += 1
            finish(result)
        try:
            assert_as_before(model, tokenizer, before)
        except AssertionError as error:
            raise AssertionError(f"SIGINT at line {k} of {lines}, {tracer.where} ({'raised' if interrupted else 'completed'}): "
                                 f"{error}") from None
    assert outcomes["interrupted"] > 0
    return lines, outcomes


def restore(handle):
    assert handle is not None and handle.state == "applied"
    handle.restore()


FTL_FAST = dict(lr=5e-2, steps=2, norm_constraint=1.0, early_stop_loss=-1.0, progress=False)


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_ftl_edit(model_name):
    model, tokenizer = sss.load_model(model_name, seed=0)
    editor = FTL(model, tokenizer, **FTL_FAST)
    every_line(model, tokenizer, lambda: editor.edit(REQUEST), restore)


def test_ftl_edit_with_sss(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, regularizer=sss.SSSRegularizer(C=0.5), **{**FTL_FAST, "steps": 1})
    every_line(model, tokenizer, lambda: editor.edit(REQUEST), restore)


def test_ftl_edit_each(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FTL_FAST)
    requests = [REQUEST, EditRequest("The capital of Spain is", "Paris"), EditRequest("Water is made of", "fire")]

    def action():
        edited = []
        for handle in editor.edit_each(requests, at_once=2):
            edited.append(handle.requests[0].target_new)
            handle.restore()
        return edited

    every_line(model, tokenizer, action, lambda edited: None)


def test_mend_edit(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = sss.MEND(model, tokenizer, rank=8, init_edit_lr=1e-1, progress=False)
    editor.init_statistics([REQUEST, EditRequest("The capital of Spain is", "Paris")])
    every_line(model, tokenizer, lambda: editor.edit(REQUEST), restore)


def test_serac_edit(tiny_gpt2):
    from test_serac import BagOfWordsClassifier, serac

    editor = serac(tiny_gpt2, BagOfWordsClassifier())
    editor.edit([EditRequest("Danielle Darrieux speaks", "English")]).commit()
    model, tokenizer = editor.model, tiny_gpt2[1]
    entries = [(e.id, e.text) for e in editor.memory]

    def finish(handle):
        restore(handle)

    every_line(model, tokenizer, lambda: editor.edit([REQUEST, EditRequest("Fact 2 is", "two")]), finish)
    assert [(e.id, e.text) for e in editor.memory] == entries


def test_session_edit_and_restore(tiny_gpt2):
    """Two edits merged into a session, then the session restored: interrupted anywhere in between."""
    model, tokenizer = tiny_gpt2
    editor = FTL(model, tokenizer, **FTL_FAST)
    session_box = {}

    def action():
        session = session_box["session"] = editor.session()
        session.edit(REQUEST)
        session.edit(EditRequest("Water is made of", "fire"))
        session.restore()
        return session

    def finish(session):
        assert session.state == "restored"

    def after_interrupt():  # an interrupt anywhere leaves a session that can still be restored, or is
        session = session_box.pop("session", None)
        if session is not None and session.state == "applied":
            session.restore()
        assert session is None or session.state == "restored"

    every_line(model, tokenizer, action, finish, after_interrupt=after_interrupt)


def test_rome_edit(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_CACHE", str(tmp_path))
    model, tokenizer = tiny_gpt2
    editor = sss.ROME(model, tokenizer, v_steps=2, stats_tokens=64, context_templates=[[4, 2]], progress=False)
    editor.prepare()  # statistics and prefixes once (they change nothing of the model)
    request = EditRequest("The language spoken by Danielle Darrieux", "English", subject="Danielle Darrieux")
    every_line(model, tokenizer, lambda: editor.edit(request), restore)


def test_memit_edit(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_CACHE", str(tmp_path))
    model, tokenizer = tiny_gpt2
    editor = sss.MEMIT(model, tokenizer, layers=[0, 1], v_steps=2, stats_tokens=64, context_templates=[[4, 1]],
                       progress=False)
    editor.prepare()
    requests = [EditRequest("The language spoken by Danielle Darrieux", "English", subject="Danielle Darrieux"),
                EditRequest("The city of the Eiffel Tower", "Rome", subject="the Eiffel Tower")]
    every_line(model, tokenizer, lambda: editor.edit(requests), restore)
