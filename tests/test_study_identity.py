"""A finished study cell is the cell that was asked for: its data, weights and code are its identity.

The same study is run against other data under the same file name, against a data file changed
in place, against a model folder whose weights changed, and after a code-version bump: each time
new cells are written beside the old ones (never mixed into them), ``stale_folders`` names the old
ones with the reason, and the summary reads only the current cells.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sss import load_model
from sss.editors import FTL
from sss.study import load_study, run_study, stale_folders, study_status, summarise_study
from sss.study import runner as study_runner
from sss.study.adopt import adopt_legacy_cells
from sss.study.identity import IDENTITY_FILE
from sss.study.requests import eval_requests
from sss.study.spec import config_hash
from sss.study.store import RECORDS

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [("Paris", "France", "Italy"), ("Berlin", "Germany", "Spain"), ("Madrid", "Spain", "Norway"),
         ("Rome", "Italy", "Chile"), ("Oslo", "Norway", "Peru"), ("Lima", "Peru", "Japan")]


def write_data(root: Path, facts=FACTS) -> Path:
    """A CounterFact-format file ``root/facts/cf.json`` (the same name under every root)."""
    records = [{"case_id": i, "prompt": f"{city} is the capital of", "target_new": new, "subject": city,
                "ground_truth": true, "rephrase_prompt": f"The country whose capital is {city} is",
                "locality_prompt": "The Eiffel Tower is in", "locality_ground_truth": "Paris"}
               for i, (city, true, new) in enumerate(facts)]
    path = root / "facts" / "cf.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def study_of(root: Path, model: str = "tiny-gpt2"):
    raw = {"name": "ident", "editors": ["ft-l"], "datasets": ["facts"], "regularizers": ["none", {"C": 0.5}],
           "data": {"facts": {"eval": "facts/cf.json"}}, "scales": {"smoke": {"eval_requests": 3}}}
    return load_study(raw, "smoke", data_root=root, model=model)


def folders(out: Path) -> set:
    return {p.name for p in (out / "ident").iterdir() if p.is_dir()}


def prompts_in(folder: Path) -> set:
    return {json.loads(line)["prompt"] for line in (folder / RECORDS).read_text().splitlines()}


def test_two_data_roots_into_one_out_give_two_sets_of_cells_never_mixed(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    write_data(a)
    write_data(b, [(city + "ville", country, new) for city, country, new in FACTS])
    first = run_study(study_of(a), out, progress=False)
    second = run_study(study_of(b), out, progress=False)  # B's cells are not A's finished ones
    assert len(folders(out)) == 4 and {s.folder for s in first}.isdisjoint({s.folder for s in second})
    assert all(prompt.split()[0].endswith("ville") for s in second for prompt in prompts_in(s.folder))
    assert not any(prompt.split()[0].endswith("ville") for s in first for prompt in prompts_in(s.folder))
    summary_b = summarise_study(study_of(b), out, resamples=200).read_text()
    fresh = tmp_path / "fresh"
    run_study(study_of(b), fresh, progress=False)
    assert summary_b == summarise_study(study_of(b), fresh, resamples=200).read_text().replace(str(fresh), str(out))
    assert [reasons for _, _, reasons in stale_folders(study_of(b), out)] == [["data changed"]] * 2


def test_one_record_changed_in_place_marks_the_cells_that_read_it_stale(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    path = write_data(root)
    done = run_study(study_of(root), out, progress=False)
    read = eval_requests(study_of(root), done[0].cell)[0]
    records = json.loads(path.read_text())
    changed = next(r for r in records if r["prompt"] == read.prompt)
    changed["target_new"] = "Atlantis"  # one record of those the cells evaluate, edited in place
    path.write_text(json.dumps(records))
    study = study_of(root)
    assert [s.done for s in study_status(study, out)] == [False, False]
    assert sorted((c.label, f.name, r) for c, f, r in stale_folders(study, out)) == sorted(
        (s.cell.label, s.folder.name, ["data changed"]) for s in done)
    run_study(study, out, progress=False)
    assert len(folders(out)) == 4  # the old cells are kept for people, never read


def test_a_model_folder_whose_weights_changed_marks_its_cells_stale(tmp_path):
    root, out, folder = tmp_path / "data", tmp_path / "out", tmp_path / "model"
    write_data(root)
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run_study(study_of(root, str(folder)), out, progress=False)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] += 1e-3  # one element of one tensor
    model.save_pretrained(folder)
    study = study_of(root, str(folder))
    assert not any(s.done for s in study_status(study, out))
    assert [r for _, _, r in stale_folders(study, out)] == [["weights changed"]] * 2


def test_a_code_version_bump_marks_the_cells_stale(tmp_path, monkeypatch):
    root, out = tmp_path / "data", tmp_path / "out"
    write_data(root)
    run_study(study_of(root), out, progress=False)
    monkeypatch.setattr(FTL, "records_version", FTL.records_version + 1)
    study = study_of(root)
    assert not any(s.done for s in study_status(study, out))
    assert [r for _, _, r in stale_folders(study, out)] == [["code changed"]] * 2


def test_an_unchanged_finished_cell_is_skipped_and_its_identity_recorded(tmp_path, monkeypatch):
    root, out = tmp_path / "data", tmp_path / "out"
    write_data(root)
    statuses = run_study(study_of(root), out, progress=False)
    recorded = json.loads((statuses[0].folder / IDENTITY_FILE).read_text())
    assert set(recorded["identity"]) == {"data", "model", "code"} and recorded["identity"]["data"]["eval"].startswith("3:")

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(study_runner, "evaluate", fail)
    monkeypatch.setattr(study_runner, "load_model", fail)  # not even a model is loaded
    assert all(s.done for s in run_study(study_of(root), out, progress=False))
    assert stale_folders(study_of(root), out) == []


def test_records_of_other_requests_are_refused_by_the_summary(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    write_data(root)
    statuses = run_study(study_of(root), out, progress=False)
    report = statuses[1].folder / "report.json"
    data = json.loads(report.read_text())
    data["records"][0]["request_id"] = "0123456789abcdef"  # as if copied in from another data set
    report.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="record 0 measured request 0123456789abcdef, not the cell's request"):
        summarise_study(study_of(root), out, resamples=200)


def test_a_legacy_cell_is_adopted_only_where_its_records_are_the_datas(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    write_data(root)
    statuses = run_study(study_of(root), out, progress=False)
    study = study_of(root)
    for status in statuses:  # back to the layout of an older sss: settings-only name, no identity
        (status.folder / IDENTITY_FILE).unlink()
        status.folder.rename(status.folder.with_name(f"{status.cell.label}-{config_hash(status.cell.config)}"))
    legacy = out / "ident" / f"{statuses[1].cell.label}-{config_hash(statuses[1].cell.config)}"
    lines = (legacy / RECORDS).read_text().splitlines()
    record = json.loads(lines[0])
    record["prompt"] = "Something else entirely"
    (legacy / RECORDS).write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    outcomes = dict(adopt_legacy_cells(study, out))
    assert outcomes[statuses[0].cell.label] == f"adopted as {statuses[0].folder.name}"
    assert outcomes[statuses[1].cell.label].startswith("not adopted: record 0 measured 'Something else entirely'")
    assert [s.done for s in study_status(study, out)] == [True, False]
    assert json.loads((statuses[0].folder / IDENTITY_FILE).read_text())["adopted"]
