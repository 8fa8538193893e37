"""EditRequest validation and the tokenization conventions every editor and metric relies on."""
import pytest
import torch

from sss.data import EditRequest, LocalityProbe, PortabilityProbe, encode_pairs, encode_prompts
from sss.data.tokenize import IGNORE_INDEX
from sss.models import gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = gpt2_tokenizer()
    tok.pad_token = tok.eos_token  # GPT-2 pads with EOS: labels must not depend on pad ids
    return tok


@pytest.mark.parametrize("field, kwargs", [
    ("prompt", dict(prompt="  ", target_new="x")),
    ("target_new", dict(prompt="The capital of France is", target_new="")),
    ("subject", dict(prompt="The capital of France is", target_new="Rome", subject="Germany")),
    ("rephrase_prompts", dict(prompt="a b", target_new="c", rephrase_prompts="not a list")),
    ("rephrase_prompts[0]", dict(prompt="a b", target_new="c", rephrase_prompts=[""])),
    ("locality[0]", dict(prompt="a b", target_new="c", locality=[42])),
])
def test_bad_requests_name_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        EditRequest(**kwargs)


def test_request_coerces_probes_and_round_trips_through_dict():
    request = EditRequest("The capital of France is", "Rome", subject="France", target_true="Paris",
                          rephrase_prompts=["France's capital is"],
                          locality=[("The capital of Spain is", "Madrid")],
                          portability=[{"prompt": "The Eiffel Tower is in", "answer": "Rome", "category": "one_hop"}])
    assert request.locality == (LocalityProbe("The capital of Spain is", "Madrid", "neighborhood"),)
    assert isinstance(request.portability[0], PortabilityProbe)
    assert request.portability[0].category == "one_hop"
    assert EditRequest.from_dict(request.to_dict()) == request


def test_target_is_a_continuation_with_one_leading_space(tokenizer):
    batch = encode_pairs(tokenizer, ["The capital of France is"], ["Paris"])
    prompt_ids = tokenizer("The capital of France is")["input_ids"]
    spaced = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    alone = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    assert spaced != alone  # the rule matters for this BPE
    assert batch.input_ids[0].tolist() == prompt_ids + spaced
    # a target that already starts with a space is not given a second one
    again = encode_pairs(tokenizer, ["The capital of France is"], [" Paris"])
    assert torch.equal(again.input_ids, batch.input_ids)


def test_right_padding_masks_and_labels_by_position(tokenizer):
    eos = tokenizer.eos_token_id
    # The second target ends with a real EOS token: it must stay a label although pad == EOS.
    batch = encode_pairs(tokenizer, ["A much longer prompt about many things is", "Short"],
                         ["New York City", "x" + tokenizer.eos_token])
    p0, p1 = (len(tokenizer(p)["input_ids"]) for p in ["A much longer prompt about many things is", "Short"])
    t0 = len(tokenizer(" New York City", add_special_tokens=False)["input_ids"])
    t1_ids = tokenizer(" x" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert t1_ids[-1] == eos
    assert batch.prompt_lengths.tolist() == [p0, p1]
    assert batch.target_lengths.tolist() == [t0, len(t1_ids)]
    width = batch.input_ids.shape[1]
    assert width == max(p0 + t0, p1 + len(t1_ids))
    row = 1
    used = p1 + len(t1_ids)
    assert batch.attention_mask[row].tolist() == [1] * used + [0] * (width - used)
    assert batch.input_ids[row, used:].eq(eos).all()  # padding sits on the right
    assert batch.labels[row, p1:used].tolist() == t1_ids  # including the EOS label
    assert batch.labels[row, :p1].eq(IGNORE_INDEX).all() and batch.labels[row, used:].eq(IGNORE_INDEX).all()
    assert batch.prompt_mask[row].sum() == p1 and batch.target_mask[row].sum() == len(t1_ids)
    assert not (batch.prompt_mask & batch.target_mask).any()


def test_generation_pads_on_the_left(tokenizer):
    batch = encode_prompts(tokenizer, ["Short", "A much longer prompt here"])
    assert batch.attention_mask[:, -1].eq(1).all()
    assert batch.attention_mask[0, 0] == 0


@pytest.mark.parametrize("prompts, targets, message", [
    ([""], ["x"], r"prompt\[0\] is empty"),
    (["a"], ["  "], r"target\[0\] is empty"),
    (["a", "b"], ["x"], "2 prompts but 1 targets"),
])
def test_bad_pairs(tokenizer, prompts, targets, message):
    with pytest.raises(ValueError, match=message):
        encode_pairs(tokenizer, prompts, targets)


def test_too_long_is_an_error_not_a_truncation(tokenizer):
    with pytest.raises(ValueError, match="longer than the model's context of 8 tokens"):
        encode_pairs(tokenizer, ["one two three four five six seven"], ["eight nine"], max_length=8)
