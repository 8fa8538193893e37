"""The single / batch / sequential protocols on tiny-gpt2 with FT-L, and the reports they feed."""
from __future__ import annotations

import json

import pytest
import torch

from sss.data import EditRequest, LocalityProbe, PortabilityProbe
from sss.editors import FTL
from sss.eval import evaluate, protocols
from sss.eval import report
from sss.models import load_model

# A radius large enough that FT-L visibly moves tiny-gpt2's weights in a few steps.
FAST = {"steps": 4, "norm_constraint": 0.05, "lr": 0.05}


def make_requests(n: int):
    subjects = ["France", "Spain", "Italy", "Norway", "Chile", "Kenya"]
    targets = ["Rome", "Oslo", "Lima", "Paris", "Cairo", "Quito"]
    return [EditRequest(f"The capital of {s} is", t, subject=s, target_true="Nowhere",
                        rephrase_prompts=[f"{s}'s capital city is"],
                        locality=[LocalityProbe("The sky is", "blue", "neighborhood"),
                                  LocalityProbe(f"The language of {s} is", "English", "unrelated_attribute")],
                        portability=[PortabilityProbe(f"The capital city of {s} is", t, "subject_replace")],
                        case_id=f"c{i}")
            for i, (s, t) in enumerate(zip(subjects[:n], targets[:n]))]


class RecordingFTL(FTL):
    """FT-L that logs each edit and keeps the weights as they were after the latest one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.edits = []
        self.after_last_edit = None

    def _apply(self, requests):
        handle = super()._apply(requests)
        self.edits.append([r.case_id for r in requests])
        self.after_last_edit = {k: v.detach().clone() for k, v in self.base_model.state_dict().items()}
        return handle


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def counted_observe(monkeypatch):
    """Count requests measured, with how many edits the editor had made at that moment, and the
    batched calls they were measured in."""
    log, calls = [], []

    def spy(model, tokenizer, requests, **kwargs):
        calls.append([r.case_id for r in requests])
        log.extend((request.case_id, spy.editor.edits.copy()) for request in requests)
        return real(model, tokenizer, requests, **kwargs)

    real = protocols.observe_many
    monkeypatch.setattr(protocols, "observe_many", spy)
    spy.log, spy.calls = log, calls
    return spy


def test_sequential_equals_edits_by_hand_and_never_recomputes_unedited(counted_observe):
    model, tok = load_model("tiny-gpt2", seed=0)
    original = state(model)
    editor = RecordingFTL(model, tok, progress=False, **FAST)
    counted_observe.editor = editor
    requests = make_requests(3)
    results = evaluate(editor, requests, "sequential", measure_each=True, progress=False)

    # The model after the run's last edit equals the three edits applied in order by hand.
    by_hand, tok2 = load_model("tiny-gpt2", seed=0)
    manual = FTL(by_hand, tok2, progress=False, **FAST)
    handles = [manual.edit([r]) for r in requests]
    assert_same_weights(editor.after_last_edit, state(by_hand))
    assert any(not torch.equal(original[k], editor.after_last_edit[k]) for k in original)  # it did edit

    # Unedited predictions: 3 calls, all before the first edit; then 3 immediate + 3 final, no more.
    before_first_edit = [case for case, edits in counted_observe.log if not edits]
    assert before_first_edit == ["c0", "c1", "c2"]
    assert len(counted_observe.log) == 9
    assert [len(edits) for _, edits in counted_observe.log[3:]] == [1, 2, 3, 3, 3, 3]
    # One batched pass for all unedited requests, one per immediate measurement, one at the end.
    assert counted_observe.calls == [["c0", "c1", "c2"], ["c0"], ["c1"], ["c2"], ["c0", "c1", "c2"]]

    # Everything restored bit for bit.
    assert_same_weights(state(model), original)
    for handle in reversed(handles):
        handle.restore()
    assert_same_weights(state(by_hand), original)

    # Records: pre, immediate, post for every request, agreement against the unedited model.
    assert [r["case_id"] for r in results.records] == ["c0", "c1", "c2"]
    for record in results.records:
        assert {"pre", "post", "immediate"} <= set(record)
        assert 0.0 <= record["post"]["locality"]["agreement"] <= 1.0
        assert "agreement" not in record["pre"]["locality"]
    assert results.summary["requests"]["reliability"] == 3
    # The last request is measured right after its own edit in the same state as at the end.
    for probe in results.records[-1]["probes"]:
        assert probe["immediate"] == probe["post"]
        assert probe["immediate_generation"] == probe["post_generation"]


def test_single_and_batch_restore_and_group_edits():
    model, tok = load_model("tiny-gpt2", seed=0)
    original = state(model)
    requests = make_requests(3)

    editor = RecordingFTL(model, tok, progress=False, **FAST)
    single = evaluate(editor, requests, "single", progress=False)
    assert editor.edits == [["c0"], ["c1"], ["c2"]]
    assert_same_weights(state(model), original)
    assert [r["edit"] for r in single.records] == [0, 1, 2]

    editor = RecordingFTL(model, tok, progress=False, **FAST)
    batch = evaluate(editor, requests, "batch", batch_size=2, progress=False)
    assert editor.edits == [["c0", "c1"], ["c2"]]
    assert [r["edit"] for r in batch.records] == [0, 0, 1]
    assert_same_weights(state(model), original)
    # The unedited phase does not depend on the mode.
    for a, b in zip(single.records, batch.records):
        assert a["pre"] == b["pre"]

    # A single edit of one request equals the first group of size one: same post numbers.
    assert single.records[2]["post"] == batch.records[2]["post"]


def test_unedited_cache_is_reused_across_calls(counted_observe):
    model, tok = load_model("tiny-gpt2", seed=0)
    requests = make_requests(2)
    cache = {}
    editor = RecordingFTL(model, tok, progress=False, **FAST)
    counted_observe.editor = editor
    first = evaluate(editor, requests, "single", progress=False, unedited_cache=cache)
    calls = len(counted_observe.log)
    second = evaluate(editor, requests, "single", progress=False, unedited_cache=cache)
    assert len(counted_observe.log) - calls == 2  # only the post-edit measurements
    assert [r["pre"] for r in first.records] == [r["pre"] for r in second.records]


def test_sequential_curve_and_reports(tmp_path):
    model, tok = load_model("tiny-gpt2", seed=0)
    requests = make_requests(3)
    plain = evaluate(FTL(model, tok, progress=False, **FAST), requests, "sequential", checkpoints=[1, 2],
                     progress=False)
    assert [p["edits"] for p in plain.curve] == [1, 2, 3]
    assert [p["requests"] for p in plain.curve] == [1, 2, 3]
    assert plain.curve[-1]["summary"]["post"] == plain.summary["post"]

    # JSON: every promised key, and it reads back.
    path = report.write_json(plain, tmp_path / "run.json", model="tiny-gpt2", data="hand-made")
    data = json.loads(path.read_text())
    assert set(report.JSON_KEYS) <= set(data)
    assert data["editor"]["editor"] == "ft-l" and data["regularizer"] is None
    assert data["seed"] == 0 and data["mode"] == "sequential"
    assert set(data["protocols"]) == {"token_acc", "exact_match", "prob_margin", "agreement"}
    assert data["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert len(data["records"]) == 3
    again = report.load_json(path)
    assert again.summary == plain.summary and again.records == plain.records
    with pytest.raises(ValueError, match="lacks"):
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        report.load_json(bad)

    # Table 1 layout: Metric | Unedited | FT-L | ...; portability present, numbers in percent.
    table = report.markdown_table([plain], include_unedited=True, dataset="hand-made")
    lines = table.strip().splitlines()
    assert lines[0] == "| Dataset | Metric | Unedited | FT-L |"
    assert [line.split("|")[2].strip() for line in lines[2:]] == [
        "Reliability (token_acc)", "Generality (token_acc)", "Locality (agreement)", "Portability (token_acc)"]
    reliability = float(lines[2].split("|")[4])
    assert reliability == pytest.approx(100 * plain.value("reliability", "token_acc"), abs=0.01)
    assert lines[4].split("|")[3].strip() == "100.00"  # the unedited model agrees with itself

    # The per-category rows (the paper's Tables 3 and 5), in the paper's order, with its names.
    assert report.category_rows([plain]) == (
        ("Neighborhood", "locality/neighborhood", "agreement"),
        ("Unrelated Attributes", "locality/unrelated_attribute", "agreement"),
        ("Subject Replace", "portability/subject_replace", "token_acc"))
    detailed = report.markdown_table([plain], rows=report.category_rows([plain]))
    assert "| Unrelated Attributes (agreement) |" in detailed

    assert report.plot_sequential({"FT-L": plain}, tmp_path / "seq.png").stat().st_size > 1000
    assert report.plot_comparison({"FT-L": plain}, tmp_path / "cmp.png").stat().st_size > 1000
    assert report.plot_c_sweep({0.5: plain, 0.9: plain}, tmp_path / "sweep.png").stat().st_size > 1000


def test_sss_columns_are_labelled(tmp_path):
    from sss.losses import SSSRegularizer

    model, tok = load_model("tiny-gpt2", seed=0)
    requests = make_requests(1)
    runs = [evaluate(FTL(model, tok, progress=False, regularizer=reg, **FAST), requests, progress=False,
                     generate=False) for reg in (None, SSSRegularizer(C=0.9))]
    table = report.markdown_table(runs)
    assert table.splitlines()[0] == "| Metric | FT-L | FT-L w/ SSS (C=0.9) |"
    assert runs[1].summary["post"]["reliability"].keys() == {"token_acc", "prob_margin"}  # no generation
    data = report.report_dict(runs[1])
    assert data["regularizer"]["C"] == 0.9 and data["regularizer"]["name"] == "SSSRegularizer"


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "parallel"}, "unknown mode"),
    ({"mode": "batch"}, "needs batch_size"),
    ({"mode": "single", "batch_size": 2}, "one request at a time"),
    ({"mode": "single", "measure_each": True}, "only apply to mode='sequential'"),
    ({"mode": "sequential", "checkpoints": [0]}, "positive integers"),
    ({"mode": "single", "eval_batch_size": 0}, "eval_batch_size"),
])
def test_bad_arguments(tiny_gpt2, kwargs, message):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match=message):
        evaluate(FTL(model, tok, progress=False), make_requests(1), **kwargs)


def test_bad_requests(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="at least one"):
        evaluate(FTL(model, tok), [])
    with pytest.raises(ValueError, match=r"requests\[1\]"):
        evaluate(FTL(model, tok), [make_requests(1)[0], "not a request"])
