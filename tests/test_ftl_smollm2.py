"""FT-L on the real SmolLM2-135M: flip a fact the model knows, with and without SSS, and undo it."""
import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer
from sss.data import encode_prompts

pytestmark = pytest.mark.slow

REQUEST = EditRequest("The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux",
                      target_true="French")


def answer(model, tokenizer, prompt=REQUEST.prompt, n=3):
    batch = encode_prompts(tokenizer, [prompt])
    out = model.generate(**batch.model_inputs, max_new_tokens=n, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, batch.input_ids.shape[1]:]).strip()


@pytest.mark.parametrize("regularizer", [None, SSSRegularizer(C=0.9)], ids=["plain", "sss"])
def test_flip_the_mother_tongue_and_restore(smollm2, regularizer):
    model, tokenizer = smollm2
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert "French" in answer(model, tokenizer)
    handle = FTL(model, tokenizer, regularizer=regularizer, progress=False).edit(REQUEST)
    try:
        assert answer(model, tokenizer).startswith("English")
        # a different fact stays as it was
        assert answer(model, tokenizer, "The capital of France is", 1) == "Paris"
    finally:
        handle.restore()
    assert "French" in answer(model, tokenizer)
    for name, p in model.named_parameters():
        assert torch.equal(p, original[name]), name
