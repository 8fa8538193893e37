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
    # Ten edits trained at once (FTL.edit_each): the same edits as one at a time to float rounding
    # (tests/test_ftl_parallel.py), and this runs that path on the real model.
    results = evaluate(FTL(model, tokenizer, progress=False), requests, "single", generate=False, progress=False,
                       edits_at_once=10)

    # What the edit must achieve on real knowledge. Measured on 2026-12-01 (2 CPU cores, torch 2.13,
    # transformers 5.24): reliability token_acc 0.07 -> 0.57 and prob_margin 0.25 -> 1.00;
    # generality token_acc 0.05 -> 0.05 but prob_margin 0.20 -> 0.30; locality agreement 0.85.
    # FT-L's prompt_last objective trains the first target token after the prompt only, so a
    # multi-token target is partly right (token_acc ~0.6) while the new target already beats the
    # true one on every edit prompt (prob_margin, ROME's comparison: CounterFact has true targets).
    # The floors keep a margin of about two requests in twenty.
    def pre_post(group, metric):
        return results.value(group, metric, "pre"), results.value(group, metric)

    print({f"{g} {m}": pre_post(g, m) for g, m in (("reliability", "token_acc"), ("reliability", "prob_margin"),
                                                    ("generality", "token_acc"), ("generality", "prob_margin"))},
          "locality agreement", results.value("locality", "agreement"))
    pre, post = pre_post("reliability", "token_acc")
    assert post >= pre + 0.4, (pre, post)  # measured +0.50
    pre, post = pre_post("reliability", "prob_margin")
    assert post >= 0.9 and post >= pre + 0.5, (pre, post)  # measured 0.25 -> 1.00
    # Rephrasings move less than the edit prompt (their token accuracy did not move), but the new
    # target beats the true one on more of them than before the edit.
    pre, post = pre_post("generality", "prob_margin")
    assert post > pre, (pre, post)  # measured 0.20 -> 0.30
    locality_floor = 0.75  # measured 0.85: 17 of 20 neighbours keep the unedited model's answer
    assert results.value("locality", "agreement") >= locality_floor, results.value("locality", "agreement")

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
