"""End to end on the real model: FT-L over 20 CounterFact validation requests (shared data)."""
from __future__ import annotations

import json

import pytest
import torch

from sss.data import load_requests
from sss.editors import FTL
from sss.eval import evaluate, report


@pytest.mark.slow
def test_ftl_on_20_counterfact_requests(smollm2, shared_data, tmp_path):
    model, tokenizer = smollm2
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    requests = load_requests(shared_data / "counterfact" / "counterfact-val.json", "counterfact", limit=20, seed=0)
    assert len(requests) == 20
    # No generation: exact_match would double the measuring time and is covered on tiny models.
    results = evaluate(FTL(model, tokenizer, progress=False), requests, "single", generate=False, progress=False)

    pre, post = results.value("reliability", "token_acc", "pre"), results.value("reliability", "token_acc")
    assert post > pre, (pre, post)
    locality = results.value("locality", "agreement")
    assert 0.0 <= locality <= 1.0
    assert 0.0 <= results.value("generality", "token_acc") <= 1.0
    # CounterFact requests carry a true target: ROME's comparison is reported too.
    assert results.value("reliability", "prob_margin") >= results.value("reliability", "prob_margin", "pre")

    path = report.write_json(results, tmp_path / "cf20.json", model="smollm2-135m", data="counterfact-val")
    data = json.loads(path.read_text())
    assert set(report.JSON_KEYS) <= set(data)
    assert data["editor"]["editor"] == "ft-l" and data["editor"]["config"]["layers"]
    assert data["versions"]["transformers"] and data["versions"]["torch"]
    assert {"token_acc", "agreement", "prob_margin"} <= set(data["protocols"])
    assert len(data["records"]) == 20
    for record in data["records"]:
        assert {"pre", "post", "probes", "case_id", "target_new"} <= set(record)
    # The shared model is handed back untouched.
    assert all(torch.equal(p, original[name]) for name, p in model.named_parameters())
