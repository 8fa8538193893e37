"""Metrics on a model whose logits the test controls, against values computed by hand.

The fake model is a bigram table over GPT-2's real BPE vocabulary: the logits at a position
depend only on the token there, and are 0 except for the entries the test sets. So a greedy
continuation, an argmax and a log-probability can all be worked out on paper.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sss.data import EditRequest, LocalityProbe, PortabilityProbe
from sss.eval import agreement, exact_match, greedy_continuations, observe, prob_margin, score, teacher_forced, \
    token_acc
from sss.eval.measure import family_means
from sss.models import gpt2_tokenizer

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # as load_model does: pad == EOS
    return tokenizer


def one(tok, text: str) -> int:
    """The id of a text that is a single BPE token (checked)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


class BigramLM(nn.Module):
    """``logits[b, t] = table[input_ids[b, t]]`` (zeros elsewhere); checks the padding side."""

    def __init__(self, table: dict, vocab: int):
        super().__init__()
        self.table = table
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(max_position_embeddings=256)
        self.calls = {"forward": 0, "generate": 0}

    def row(self, token: int) -> torch.Tensor:
        logits = torch.zeros(self.vocab, dtype=torch.float64)  # exact enough for hand-computed values
        for nxt, value in self.table.get(token, {}).items():
            logits[nxt] = value
        return logits

    def forward(self, input_ids, attention_mask):
        self.calls["forward"] += 1
        # Teacher forcing must pad on the right: every row's mask is 1...1 0...0.
        lengths = attention_mask.sum(-1)
        expected = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        assert torch.equal(attention_mask, expected), "teacher forcing must pad on the right"
        logits = torch.stack([torch.stack([self.row(int(t)) for t in row]) for row in input_ids])
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample):
        self.calls["generate"] += 1
        assert do_sample is False
        assert bool((attention_mask[:, -1] == 1).all()), "generation must pad on the left"
        out = input_ids
        for _ in range(max_new_tokens):
            nxt = torch.stack([self.row(int(t)).argmax() for t in out[:, -1]])
            out = torch.cat([out, nxt[:, None]], dim=1)
        return out


def log_p(table_row: dict, token: int, vocab: int) -> float:
    """log softmax by hand: the row is 0 everywhere except ``table_row``'s entries."""
    total = (vocab - len(table_row)) + sum(math.exp(v) for v in table_row.values())
    return table_row.get(token, 0.0) - math.log(total)


def test_leading_space_rule(tok):
    # The target is a continuation: " Paris" (one token), not "Paris" (another token).
    is_, space_paris, paris = one(tok, " is"), one(tok, " Paris"), one(tok, "Paris")
    assert space_paris != paris
    good = BigramLM({is_: {space_paris: 5.0}}, len(tok))
    bad = BigramLM({is_: {paris: 5.0}}, len(tok))
    pair = [("The capital of France is", "Paris")]
    assert teacher_forced(good, tok, pair)[0].labels == (space_paris,)
    assert token_acc(teacher_forced(good, tok, pair)[0]) == 1.0
    assert token_acc(teacher_forced(bad, tok, pair)[0]) == 0.0
    # Generation: " Paris" decodes to " Paris", which matches "Paris" after normalisation.
    assert greedy_continuations(good, tok, ["The capital of France is"], [1]) == [" Paris"]
    assert exact_match(" Paris", "Paris") == 1.0
    assert greedy_continuations(bad, tok, ["The capital of France is"], [1]) == ["Paris"]


def test_multi_token_target_accuracy_and_generation(tok):
    is_, barack, obama, michelle = one(tok, " is"), one(tok, " Barack"), one(tok, " Obama"), one(tok, " Michelle")
    half = BigramLM({is_: {barack: 4.0}, barack: {michelle: 4.0}}, len(tok))
    full = BigramLM({is_: {barack: 4.0}, barack: {obama: 4.0}}, len(tok))
    pair = [("The president is", "Barack Obama")]
    assert teacher_forced(half, tok, pair)[0].labels == (barack, obama)
    assert token_acc(teacher_forced(half, tok, pair)[0]) == 0.5
    assert token_acc(teacher_forced(full, tok, pair)[0]) == 1.0
    # Greedy generation runs exactly as many tokens as the target has.
    assert greedy_continuations(half, tok, ["The president is"], [2]) == [" Barack Michelle"]
    assert greedy_continuations(full, tok, ["The president is"], [2]) == [" Barack Obama"]


def test_pad_equal_to_eos_and_right_padding(tok):
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos
    is_, paris, rome, in_ = one(tok, " is"), one(tok, " Paris"), one(tok, " Rome"), one(tok, " in")
    # The target ends with a real EOS token: it must be scored by position, not dropped as padding.
    # " is" -> " Paris" is right; " Paris" -> " Rome" makes the EOS position wrong: accuracy 1/2.
    table = {is_: {paris: 3.0}, paris: {rome: 2.0}, in_: {rome: 1.5}}
    model = BigramLM(table, len(tok))
    short = ("France: the capital is", f"Paris{EOS}")
    long = ("A much longer prompt that ends in", "Rome and then some more words")
    together = teacher_forced(model, tok, [short, long])  # the short row is padded (with EOS) on the right
    assert together[0].labels == (paris, eos)
    assert token_acc(together[0]) == 0.5
    # Hand-computed mean log-probability of [" Paris", EOS].
    expected = (log_p(table[is_], paris, len(tok)) + log_p(table[paris], eos, len(tok))) / 2
    assert together[0].mean_log_prob == pytest.approx(expected, abs=1e-9)
    # Padding changes nothing: each row scored alone gives the same result.
    alone = [teacher_forced(model, tok, [pair])[0] for pair in (short, long)]
    for a, b in zip(together, alone):
        assert a.predicted == b.predicted and a.labels == b.labels
        assert a.mean_log_prob == pytest.approx(b.mean_log_prob, abs=1e-6)
    assert together[1].labels == tuple(tok(" Rome and then some more words")["input_ids"])


def test_generation_pads_left_and_keeps_each_rows_length(tok):
    is_, paris, rome, in_ = one(tok, " is"), one(tok, " Paris"), one(tok, " Rome"), one(tok, " in")
    model = BigramLM({is_: {paris: 3.0}, paris: {rome: 2.0}, in_: {rome: 1.0}, rome: {paris: 1.0}}, len(tok))
    prompts = ["The capital is", "Many people live in"]  # different lengths: the first is left padded
    texts = greedy_continuations(model, tok, prompts, [1, 3])
    assert texts == [" Paris", " Rome Paris Rome"]
    assert model.calls["generate"] == 1  # both rows in one batched call


def test_prob_margin_compares_mean_token_log_probs(tok):
    is_, rome, paris, barack, obama = (one(tok, t) for t in (" is", " Rome", " Paris", " Barack", " Obama"))
    table = {is_: {rome: 2.0, paris: 1.0, barack: 2.5}, barack: {obama: -3.0}}
    model = BigramLM(table, len(tok))
    new, true, two = teacher_forced(model, tok, [("X is", "Rome"), ("X is", "Paris"), ("X is", "Barack Obama")])
    assert new.mean_log_prob == pytest.approx(log_p(table[is_], rome, len(tok)), abs=1e-9)
    assert prob_margin(new, true) == 1.0 and prob_margin(true, new) == 0.0
    # Multi-token: the *mean* per-token log-prob, so " Barack" (likely) + " Obama" (unlikely) is averaged.
    expected_two = (log_p(table[is_], barack, len(tok)) + log_p(table[barack], obama, len(tok))) / 2
    assert two.mean_log_prob == pytest.approx(expected_two, abs=1e-9)
    assert prob_margin(new, two) == float(new.mean_log_prob > expected_two)


def test_locality_agreement_with_the_unedited_model(tok):
    is_, madrid, spain, es = one(tok, " is"), one(tok, " Madrid"), one(tok, " Spain"), one(tok, " es")
    before = BigramLM({is_: {spain: 2.0}, madrid: {es: 2.0}}, len(tok))
    after = BigramLM({is_: {spain: 2.0}, madrid: {spain: 2.0}}, len(tok))
    pair = [("The capital of Spain is", "Madrid es")]  # two target tokens: " Madrid", " es"
    pre, post = teacher_forced(before, tok, pair)[0], teacher_forced(after, tok, pair)[0]
    assert pre.labels == (madrid, es)
    # Position 1 (" Madrid" -> ?) changed from " es" to " Spain"; position 0 still " Spain".
    assert agreement(post, pre) == 0.5
    assert agreement(pre, pre) == 1.0
    # Accuracy against the probe's own answer is a different number: the unedited model itself
    # gets " Madrid" wrong (it says " Spain") and " es" right.
    assert token_acc(pre) == 0.5 and token_acc(post) == 0.0


def test_exact_match_normalises_whitespace_only():
    assert exact_match("  Paris \n", "Paris") == 1.0
    assert exact_match(" New   York", "New York") == 1.0
    assert exact_match(" paris", "Paris") == 0.0
    assert exact_match(" Paris,", "Paris") == 0.0


def test_observe_and_score_a_whole_request_in_batched_passes(tok):
    is_, rome, paris, madrid = one(tok, " is"), one(tok, " Rome"), one(tok, " Paris"), one(tok, " Madrid")
    before = BigramLM({is_: {paris: 2.0, madrid: 1.0}}, len(tok))
    after = BigramLM({is_: {rome: 2.0}}, len(tok))
    request = EditRequest(
        "The capital of France is", "Rome", target_true="Paris", rephrase_prompts=["France's capital city is"],
        locality=[LocalityProbe("The capital of Spain is", "Madrid", "pre_neighbor")],
        portability=[PortabilityProbe("The French capital is", "Rome", "subject_replace")])
    pre = observe(before, tok, request)
    calls = dict(after.calls)
    post = observe(after, tok, request)
    # One teacher-forced pass for all 4 probes + 3 rivals, one generate for all 4 prompts.
    assert after.calls["forward"] - calls["forward"] == 1 and after.calls["generate"] - calls["generate"] == 1
    values = score(post, pre)
    assert [v["token_acc"] for v in values] == [1.0, 1.0, 0.0, 1.0]
    assert [v["exact_match"] for v in values] == [1.0, 1.0, 0.0, 1.0]
    # Reliability and generality: Rome beats Paris; the neighbour: Madrid (0) loses to Rome (2).
    assert [v.get("prob_margin") for v in values] == [1.0, 1.0, 0.0, None]
    # Locality agreement: unedited said " Paris", edited says " Rome".
    assert values[2]["agreement"] == 0.0 and "agreement" not in values[0]
    pre_values = score(pre)
    assert [v["token_acc"] for v in pre_values] == [0.0, 0.0, 0.0, 0.0]
    assert pre_values[0]["prob_margin"] == 0.0  # before the edit Paris beats Rome
    means = family_means(post.probes, values)
    assert set(means) == {"reliability", "generality", "locality", "locality/pre_neighbor", "portability",
                          "portability/subject_replace"}
    assert means["locality"] == {"token_acc": 0.0, "exact_match": 0.0, "prob_margin": 0.0, "agreement": 0.0}
    with pytest.raises(ValueError, match="other probes"):
        score(post, observe(before, tok, EditRequest("The capital of Italy is", "Rome")))


def test_bad_input_is_a_value_error(tok):
    model = BigramLM({}, len(tok))
    with pytest.raises(ValueError, match="batch_size"):
        teacher_forced(model, tok, [("a", "b")], batch_size=0)
    with pytest.raises(ValueError, match="lengths"):
        greedy_continuations(model, tok, ["a", "b"], [1])
    with pytest.raises(ValueError, match="empty"):
        teacher_forced(model, tok, [("a prompt", " ")])


def test_length_buckets_group_similar_lengths_and_cover_every_row():
    from sss.eval.metrics import length_buckets

    # Padding the short rows to 30 tokens costs more than a second forward pass.
    assert length_buckets([5, 30, 5, 30, 5], max_rows=32) == [[0, 2, 4], [1, 3]]
    # Similar lengths share one pass; max_rows caps a pass.
    assert length_buckets([7, 8, 7, 8], max_rows=32) == [[0, 2, 1, 3]]
    capped = length_buckets([5] * 5, max_rows=2)
    assert sorted(map(len, capped)) == [1, 2, 2] and [i for b in capped for i in b] == [0, 1, 2, 3, 4]
    lengths = [int(x) for x in torch.randint(3, 40, (57,), generator=torch.Generator().manual_seed(1))]
    buckets = length_buckets(lengths, max_rows=8)
    assert sorted(i for b in buckets for i in b) == list(range(57)) and max(map(len, buckets)) <= 8


def test_bucketed_scoring_equals_one_pair_at_a_time(tok):
    is_, paris, rome = one(tok, " is"), one(tok, " Paris"), one(tok, " Rome")
    model = BigramLM({is_: {paris: 3.0}, paris: {rome: 1.0}}, len(tok))
    pairs = [("The capital is", "Paris Rome"),
             ("A very long prompt, with many many words in it, which in the end says the capital is", "Paris"),
             ("It is", "Rome"), ("Here the capital is", "Paris")]
    together = teacher_forced(model, tok, pairs)
    calls = model.calls["forward"]
    alone = [teacher_forced(model, tok, [pair])[0] for pair in pairs]
    assert calls == 2  # the long prompt got a pass of its own
    assert [r.predicted for r in together] == [r.predicted for r in alone]
    assert [r.labels for r in together] == [r.labels for r in alone]
    assert [r.mean_log_prob for r in together] == pytest.approx([r.mean_log_prob for r in alone], abs=1e-12)
    texts = greedy_continuations(model, tok, [p for p, _ in pairs], [2, 1, 1, 1])
    assert texts == [" Paris Rome", " Paris", " Paris", " Paris"]


def test_headline_locality_leaves_out_distract_neighbors():
    from sss.eval.measure import ProbeSpec, family_means

    probes = [ProbeSpec("locality", "neighborhood", "a", "x"), ProbeSpec("locality", "pre_neighbor", "b", "y"),
              ProbeSpec("locality", "distract_neighbor", "c", "z")]
    values = [{"agreement": 1.0}, {"agreement": 0.5}, {"agreement": 0.0}]
    means = family_means(probes, values)
    assert means["locality"]["agreement"] == 0.75
    assert means["locality/distract_neighbor"]["agreement"] == 0.0
    assert means["locality/neighborhood"]["agreement"] == 1.0
