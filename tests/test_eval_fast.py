"""The fast evaluation path equals the straightforward one.

* batched measurement (every request of a model state in one length-bucketed pass, greedy
  continuations read off teacher forcing, each string tokenized once) gives the same records
  as measuring request by request with ``generate``, in every mode;
* the ``exact_match`` shortcut (sss.eval.greedy) agrees with greedy generation on every probe
  of the demo set, on both tiny models, unedited and after an FT-L edit, and is actually taken.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from sss.data import demo_requests
from sss.data.tokenize import EncodingCache
from sss.editors import FTL
from sss.eval import evaluate, greedy_continuations, observe, observe_many, probes_of, protocols
from sss.eval.greedy import TIE_TOLERANCE, greedy_from_teacher_forcing, known_prefix, shortcut_applies
from sss.eval.lm_head import shares_context
from sss.eval.metrics import TeacherForced, teacher_forced, teacher_forced_with_gaps

pytestmark = pytest.mark.usefixtures("one_thread")

# A radius large enough that FT-L visibly moves a tiny model's weights in a few steps.
FAST = {"steps": 6, "norm_constraint": 0.5, "lr": 0.5}

# Right padding with a mask changes a real token's logits only by rounding (other batch shapes
# sum in another order); measured: at most 9.5e-7 on the tiny models' mean log-probabilities
# (1.4e-5 on SmolLM2's, whose logits are larger).
LOG_PROB_TOLERANCE = 1e-5


def per_request_observe_many(model, tokenizer, requests, *, generate=True, batch_size=32, cache=None):
    """The reference: each request on its own, generate for exact_match, nothing cached."""
    return [observe(model, tokenizer, r, generate=generate, batch_size=batch_size, shortcut=False)
            for r in requests]


def run(model_name, mode, generate, monkeypatch, reference: bool, **kwargs):
    from sss.models import load_model

    model, tok = load_model(model_name, seed=0)
    editor = FTL(model, tok, progress=False, **FAST)
    with monkeypatch.context() as patch:
        if reference:
            patch.setattr(protocols, "observe_many", per_request_observe_many)
        return evaluate(editor, demo_requests()[:3], mode, generate=generate, progress=False, **kwargs)


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("mode, kwargs", [("single", {}), ("batch", {"batch_size": 2}),
                                          ("sequential", {"measure_each": True, "checkpoints": [2]})])
@pytest.mark.parametrize("generate", [True, False])
def test_batched_records_equal_the_per_request_path(model_name, mode, kwargs, generate, monkeypatch):
    fast = run(model_name, mode, generate, monkeypatch, reference=False, **kwargs)
    slow = run(model_name, mode, generate, monkeypatch, reference=True, **kwargs)
    assert fast.records == slow.records
    assert fast.curve == slow.curve
    # Not a vacuous comparison: the edits moved something the records see.
    changed = [p for r in fast.records for p in r["probes"] if p["pre"] != p["post"]]
    assert changed
    if generate:
        assert all("post_generation" in p for r in fast.records for p in r["probes"])


@pytest.mark.parametrize("shortcut", [True, False])
def test_observations_of_many_requests_match_one_at_a_time(tiny_model, shortcut):
    model, tok = tiny_model
    requests = demo_requests()[:12]
    together = observe_many(model, tok, requests, batch_size=8, shortcut=shortcut)
    for request, joint in zip(requests, together):
        alone = observe(model, tok, request, batch_size=8, shortcut=False)
        assert joint.probes == alone.probes
        assert joint.generations == alone.generations
        for a, b in zip(joint.answers + joint.rivals, alone.answers + alone.rivals):
            assert (a is None) == (b is None)
            if a is not None:
                assert (a.predicted, a.labels) == (b.predicted, b.labels)
                assert a.mean_log_prob == pytest.approx(b.mean_log_prob, abs=LOG_PROB_TOLERANCE)


def test_lm_head_on_chosen_positions_only_changes_nothing(tiny_model, monkeypatch):
    """The three ways of skipping LM-head work give the full-logits result (to float rounding)."""
    from sss.eval import metrics

    model, tok = tiny_model
    assert metrics.logits_selection(model) == "mask"
    pairs = [(p.prompt, p.answer) for r in demo_requests()[:10] for p in probes_of(r)]
    results = {}
    for selection in ("mask", "tail", "all"):
        monkeypatch.setattr(metrics, "logits_selection", lambda _model, s=selection: s)
        scored = metrics.teacher_forced_with_gaps(model, tok, pairs, batch_size=8)
        results[selection] = scored.results, scored.gaps
    for selection in ("mask", "tail"):
        for a, b in zip(results[selection][0], results["all"][0]):
            assert (a.predicted, a.labels) == (b.predicted, b.labels)
            assert a.mean_log_prob == pytest.approx(b.mean_log_prob, abs=LOG_PROB_TOLERANCE)
        for a, b in zip(results[selection][1], results["all"][1]):
            assert a == pytest.approx(b, abs=1e-5)


def test_a_rival_scored_in_the_answers_row_equals_its_own_row(tiny_model):
    model, tok = tiny_model
    cache = EncodingCache(tok)
    probes = [p for r in demo_requests() for p in probes_of(r) if p.rival is not None]
    alternatives = [cache.target_ids(p.rival) for p in probes]
    shared = [shares_context(cache.target_ids(p.answer), ids) for p, ids in zip(probes, alternatives)]
    assert 0 < sum(shared) < len(probes)  # both kinds occur in the demo set
    chosen = [p for p, ok in zip(probes, shared) if ok]
    together = teacher_forced_with_gaps(model, tok, [(p.prompt, p.answer) for p in chosen], cache=cache,
                                        alternatives=[cache.target_ids(p.rival) for p in chosen]).alternatives
    alone = teacher_forced(model, tok, [(p.prompt, p.rival) for p in chosen], cache=cache)
    for a, b in zip(together, alone):
        assert (a.predicted, a.labels) == (b.predicted, b.labels)
        assert a.mean_log_prob == pytest.approx(b.mean_log_prob, abs=LOG_PROB_TOLERANCE)
    with pytest.raises(ValueError, match="needs its own row"):
        teacher_forced_with_gaps(model, tok, [("The sky is", "blue")], alternatives=[[1, 2, 3]])


def shortcut_vs_generate(model, tok):
    probes = [p for r in demo_requests() for p in probes_of(r)]
    prompts = [p.prompt for p in probes]
    scored = teacher_forced_with_gaps(model, tok, [(p.prompt, p.answer) for p in probes])
    answers = scored.results
    fast, counts = greedy_from_teacher_forcing(model, tok, prompts, answers, scored.gaps)
    generated = greedy_continuations(model, tok, prompts, [len(a.labels) for a in answers])
    mismatches = [(p.prompt, f, g) for p, f, g in zip(probes, fast, generated) if f != g]
    return mismatches, counts, answers


@pytest.mark.parametrize("edited", [False, True])
def test_exact_match_shortcut_agrees_with_generation_on_the_demo_set(tiny_model, edited):
    model, tok = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = None
    if edited:
        request = demo_requests()[0]
        handle = FTL(model, tok, progress=False, **FAST).edit([request])
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    try:
        mismatches, counts, answers = shortcut_vs_generate(model, tok)
    finally:
        if handle is not None:
            handle.restore()
    assert mismatches == []
    assert counts["read"] > len(answers) // 2  # most rows never call generate
    assert counts["read"] + counts["continued"] + counts["generated"] == len(answers)


@pytest.mark.slow
def test_exact_match_shortcut_agrees_with_generation_on_smollm2(smollm2):
    """On a real model the argmax often reproduces the target, so every branch is exercised."""
    model, tok = smollm2
    mismatches, counts, _ = shortcut_vs_generate(model, tok)
    assert mismatches == []
    assert counts["read"] > 0 and counts["continued"] > 0


def test_known_prefix_stops_at_the_first_miss_and_refuses_ties_and_eos():
    answer = TeacherForced(predicted=(5, 6, 9, 9), labels=(5, 6, 7, 8), mean_log_prob=-1.0)
    assert known_prefix(answer, (1.0, 1.0, 1.0, 1e-9), eos=set()) == (5, 6, 9)  # the tie after the miss is moot
    assert known_prefix(answer, (1.0, TIE_TOLERANCE / 2, 1.0, 1.0), eos=set()) is None
    assert known_prefix(answer, (1.0, 1.0, 1.0, 1.0), eos={6}) is None
    assert known_prefix(answer, None, eos=set()) is None
    hit = TeacherForced(predicted=(5, 6), labels=(5, 6), mean_log_prob=-0.1)
    assert known_prefix(hit, (1.0, 1.0), eos=set()) == (5, 6)


def test_shortcut_is_off_where_generation_need_not_follow_teacher_forcing(tiny_gpt2):
    model, tok = tiny_gpt2
    assert shortcut_applies(model)
    model.generation_config.repetition_penalty = 1.3  # a logits processor greedy decoding would apply
    assert not shortcut_applies(model)
    model.generation_config.repetition_penalty = 1.0

    class Wrapper(torch.nn.Module):  # like SERAC's routed model: not a plain causal LM
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kwargs):
            return self.inner(**kwargs)

        def generate(self, **kwargs):
            return self.inner.generate(**kwargs)

    wrapped = Wrapper(model)
    assert not shortcut_applies(wrapped)
    probes = [p for r in demo_requests()[:3] for p in probes_of(r)]
    scored = teacher_forced_with_gaps(wrapped, tok, [(p.prompt, p.answer) for p in probes])
    answers = scored.results
    texts, counts = greedy_from_teacher_forcing(wrapped, tok, [p.prompt for p in probes], answers, scored.gaps)
    assert counts == {"read": 0, "continued": 0, "generated": len(probes)}
    assert texts == greedy_continuations(model, tok, [p.prompt for p in probes], [len(a.labels) for a in answers])


class CountingTokenizer:
    """Delegates to a real tokenizer and counts how often each string is tokenized."""

    def __init__(self, inner):
        self.inner, self.calls = inner, Counter()

    def __call__(self, text, **kwargs):
        self.calls[text, kwargs.get("add_special_tokens")] += 1
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_each_string_is_tokenized_once_per_cache(tiny_gpt2):
    model, tok = tiny_gpt2
    counting = CountingTokenizer(tok)
    cache = EncodingCache(counting)
    requests = demo_requests()[:5]
    first = observe_many(model, counting, requests, cache=cache)
    second = observe_many(model, counting, requests, cache=cache)  # e.g. the edited model's pass
    assert counting.calls and max(counting.calls.values()) == 1
    assert [o.generations for o in first] == [o.generations for o in second]
    with pytest.raises(ValueError, match="another tokenizer"):
        observe_many(model, tok, requests, cache=cache)
