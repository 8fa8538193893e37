"""sss.study: grids, resumable cells, the checkpoint cache, the summary (tiny models, demo data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sss import MEND
from sss.study import cell_identity, config_hash, load_study, run_study, stale_folders, summarise_study
from sss.study.identity import hashed_config, request_id
from sss.study.requests import eval_requests
from sss.study import runner as study_runner
from sss.study.checkpoints import cell_checkpoint_folder
from sss.study.runner import cell_folder
from sss.study.store import RECORDS

STUDIES = Path(__file__).resolve().parents[1] / "studies"
DEMO_SPLIT = {"eval": "demo", "eval_slice": [60, None], "train": "demo", "train_slice": [0, 40],
              "val_slice": [40, 50]}


def grid(**changes) -> dict:
    raw = {"name": "unit", "editors": ["ft-l"], "datasets": ["demo"], "regularizers": ["none", {"C": 0.9}],
           "data": {"demo": dict(DEMO_SPLIT)}, "scales": {"smoke": {"eval_requests": 3}}}
    raw.update(changes)
    return raw


def records_of(folder: Path) -> list:
    return json.loads((folder / "report.json").read_text())["records"]


class Interrupt(Exception):
    pass


def test_smoke_study_end_to_end(tmp_path):
    study = load_study(grid(editors=["ft-l", "mend"], score_sss=["last_hidden"]), "smoke")
    statuses = run_study(study, tmp_path, progress=False)
    assert [s.done for s in statuses] == [True] * 4
    for status in statuses:
        records = records_of(status.folder)
        assert [r["index"] for r in records] == [0, 1, 2]
        assert all("post" in r and r["sss_score"]["last_hidden"] > 0 for r in records)
        assert status.folder.name.startswith(status.cell.label + "-")
    summary = summarise_study(study, tmp_path, resamples=200).read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| demo |")]
    # one row per (editor, metric) pairing "without" against "with SSS"
    assert {(r.split(" | ")[1], r.split(" | ")[3].split(" (")[0]) for r in rows} >= {
        ("ft-l", "Reliability"), ("ft-l", "Locality"), ("mend", "Reliability"), ("mend", "Locality")}
    assert all("Δ" in r and "sss0.9-lh" in r for r in rows)


def test_shipped_grids_load_at_every_scale():
    files = sorted(STUDIES.glob("*.toml"))
    assert {f.stem for f in files} >= {"table1", "table2_sequential", "table3_rome", "table5_portability", "c_sweep",
                                       "sss_metric"}
    for path in files:
        for scale in ("smoke", "cpu", "gpu"):
            study = load_study(path, scale)
            # Settings alone (a folder's hash adds the identity, which needs the data and the weights).
            names = [f"{c.label}-{config_hash(c.config)}" for c in study.cells]
            assert len(set(names)) == len(names), f"{path.name} {scale}: two cells share a folder"
    sweep = load_study(STUDIES / "c_sweep.toml", "cpu")
    targets = {(c.regularizer or {}).get("target") for c in sweep.cells}
    assert targets == {None, "last_hidden", "input_embeds", "edited_block"}


NOT_RUN_YET = {"rome", "memit"}  # editors whose CPU-scale cells are not in study-results yet


def test_the_shipped_grids_name_exactly_the_committed_cells(shared_data, smollm2):
    """The committed CPU-scale results are the cells the shipped grids ask for, on the shared data and
    the bundled SmolLM2 (their identity), so that no finished cell reruns and none is stale."""
    results = STUDIES.parent / "study-results"
    for path in sorted(STUDIES.glob("*.toml")):
        study = load_study(path, "cpu", data_root=shared_data)
        committed = {p.name for p in (results / study.name).iterdir() if p.is_dir()}
        missing = [c.folder_name for c in study.cells
                   if c.editor not in NOT_RUN_YET and c.folder_name not in committed]
        assert not missing, f"{path.name}: cells whose identity changed: {missing[:3]}"
        assert committed <= {c.folder_name for c in study.cells}  # (the newer editors' cells may be under way)
        assert stale_folders(study, results) == []


def test_editor_options_come_from_the_registry():
    smoke = load_study(grid(editors="all"), "smoke")
    options = {c.editor: c.config["editor_options"] for c in smoke.cells}
    assert options == {"ft-l": {"steps": 3}, "memit": {"v_steps": 3, "stats_tokens": 256, "context_templates": [[5, 1]]},
                       "mend": {"rank": 8, "stats_requests": 4},
                       "rome": {"v_steps": 3, "stats_tokens": 256, "context_templates": [[5, 2]]},
                       "serac": {"train_encoder": False}}
    with pytest.raises(ValueError, match=r"unknown editor\(s\) \['romeo'\]; registered editors: ft-l, memit, mend, rome, serac"):
        load_study(grid(editors=["ft-l", "romeo"]), "smoke")


def test_shipped_grid_runs_on_real_data(tmp_path, shared_data):
    study = load_study(STUDIES / "table1.toml", "smoke", data_root=shared_data)
    statuses = run_study(study, tmp_path, only="ft-l-counterfact", progress=False)
    assert len(statuses) == 2 and all(s.done for s in statuses)
    assert len(records_of(statuses[0].folder)) == study.settings["eval_requests"]


def _interrupted_cell(tmp_path, monkeypatch, requests=4):
    """A single-mode cell stopped after two of its requests; returns (study, cell folder)."""
    study = load_study(grid(regularizers=["none"], scales={"smoke": {"eval_requests": requests}}), "smoke")
    real_evaluate, calls = study_runner.evaluate, []

    def stop_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise Interrupt
        calls.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(study_runner, "evaluate", stop_after_two)
    with pytest.raises(Interrupt):
        run_study(study, tmp_path, progress=False)
    monkeypatch.setattr(study_runner, "evaluate", real_evaluate)
    return study, cell_folder(tmp_path, study.cells[0])


def test_interrupted_cell_resumes_to_the_same_records(tmp_path, monkeypatch):
    study, folder = _interrupted_cell(tmp_path / "parts", monkeypatch)
    cell = study.cells[0]
    run_study(study, tmp_path / "whole", progress=False)
    expected = records_of(cell_folder(tmp_path / "whole", cell))
    assert not (folder / "done").exists()
    with open(folder / RECORDS, "a") as handle:
        handle.write('{"index": 2, "torn')  # a crash in the middle of a line
    run_study(study, tmp_path / "parts", progress=False)
    assert records_of(folder) == expected
    # and both equal one evaluate() over all the requests (records carry no timings)
    from sss.eval import evaluate

    model, tokenizer = study_runner.load_model("tiny-gpt2")
    editor = study_runner.build_editor(study, cell, model, tokenizer, tmp_path, False)
    direct = evaluate(editor, eval_requests(study, cell), "single", generate=False, progress=False)
    requests = eval_requests(study, cell)
    assert [r.pop("request_id") for r in expected] == [request_id(r) for r in requests]  # each names its request
    assert json.loads(json.dumps(direct.records)) == expected


def test_finished_cell_is_skipped(tmp_path, monkeypatch):
    study = load_study(grid(), "smoke")
    run_study(study, tmp_path, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(study_runner, "evaluate", fail)
    monkeypatch.setattr(study_runner, "build_editor", fail)
    assert all(s.done for s in run_study(study, tmp_path, progress=False))


def test_sequential_cells_one_per_length_with_the_curve(tmp_path):
    study = load_study(grid(mode="sequential", regularizers=["none"], scales={"smoke": {"sizes": [1, 3]}}), "smoke")
    assert [c.config["length"] for c in study.cells] == [1, 3]
    statuses = run_study(study, tmp_path, progress=False)
    longest = json.loads((statuses[1].folder / "report.json").read_text())
    assert len(longest["records"]) == 3 and [p["edits"] for p in longest["curve"]] == [1, 3]


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, path + (i,))
    else:
        yield path


def test_a_cells_hash_changes_with_every_setting_and_identity_field_and_names_are_stable():
    study = load_study(grid(editors=["mend"]), "smoke")
    cell = study.cells[1]
    again = load_study(grid(editors=["mend"]), "smoke").cells[1]
    assert cell.folder_name == again.folder_name
    settings, identity = hashed_config(cell.config), cell_identity(study, cell)
    assert set(identity) == {"data", "model", "code"} and set(identity["data"]) == {"eval", "train", "val"}
    assert config_hash({"identity": identity, "config": dict(reversed(list(settings.items())))}) == cell.key
    for part, value in (("config", settings), ("identity", identity)):
        for path in _leaves(value):
            changed = json.loads(json.dumps({"config": settings, "identity": identity}))
            target = changed[part]
            for key in path[:-1]:
                target = target[key]
            old = target[path[-1]]
            target[path[-1]] = (not old) if isinstance(old, bool) else ("x" if old is None else f"{old}!")
            assert config_hash(changed) != cell.key, f"changing {part} {path} left the hash as it was"
    moved = json.loads(json.dumps(cell.config))
    moved["data"]["eval"] = "elsewhere/the-same-requests.json"  # a path is for people: content decides
    assert hashed_config(moved) == settings


def test_checkpoints_are_trained_once_and_reused(tmp_path, monkeypatch):
    fits = []
    real_fit = MEND.fit
    monkeypatch.setattr(MEND, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    data = {"demo": dict(DEMO_SPLIT), "demo-b": dict(DEMO_SPLIT, eval_slice=[50, 60])}
    study = load_study(grid(editors=["mend"], datasets=["demo", "demo-b"], data=data), "smoke")
    run_study(study, tmp_path, progress=False)
    assert len(fits) == 2  # without and with SSS; each serves both datasets
    folders = {cell_checkpoint_folder(study, c, tmp_path) for c in study.cells}
    assert len(folders) == 2 and all((f / "done").exists() for f in folders)
    other = load_study(grid(name="other", editors=["mend"], data=data), "smoke")  # another study, same training
    run_study(other, tmp_path, progress=False)
    assert len(fits) == 2


def test_overlapping_train_and_eval_data_are_refused(tmp_path):
    data = {"demo": dict(DEMO_SPLIT, eval_slice=[30, None])}
    study = load_study(grid(editors=["mend"], regularizers=["none"], data=data), "smoke")
    with pytest.raises(ValueError, match="overlap"):
        run_study(study, tmp_path, progress=False)


def test_bad_study_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="colour"):
        load_study(grid(colour="red"), "smoke")
    with pytest.raises(ValueError, match="huge"):
        load_study(grid(), "huge")
    with pytest.raises(ValueError, match="nowhere"):
        load_study(grid(datasets=["nowhere"]), "smoke")
    with pytest.raises(ValueError, match="regularizer"):
        load_study(grid(regularizers=[{"strength": 1}]), "smoke")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "unit",')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        load_study(broken, "smoke")
    broken.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object, not list"):
        load_study(broken, "smoke")


def test_partial_summary_pairs_only_the_requests_both_sides_recorded(tmp_path):
    """Between sittings a summary can read unfinished cells: the paired n is what both sides have."""
    from sss.study import load_study, summarise_study
    from sss.study.runner import cell_folder
    from sss.study.store import RecordLog

    path = tmp_path / "grid.toml"
    path.write_text('name = "partial"\ntitle = "partial"\nsummary = "table"\nmode = "single"\n'
                    'editors = ["ft-l"]\ndatasets = ["demo"]\nregularizers = ["none", {C = 0.9}]\n'
                    '[scales.smoke]\neval_requests = 6\n')
    study = load_study(path, "smoke")
    base, with_sss = study.cells
    record = {"probes": [], "pre": {"reliability": {"token_acc": 0.0}},
              "post": {"reliability": {"token_acc": 1.0}}}
    for index in range(4):  # the baseline has recorded requests 0-3, the SSS side 0-1 and 5
        RecordLog(cell_folder(tmp_path, base)).append(dict(record, index=index))
    for index, value in ((0, 0.0), (1, 0.0), (5, 0.0)):
        RecordLog(cell_folder(tmp_path, with_sss)).append(
            dict(record, index=index, post={"reliability": {"token_acc": value}}))

    assert "| demo" not in summarise_study(study, tmp_path, resamples=200).read_text()  # nothing finished
    text = summarise_study(study, tmp_path, resamples=200, partial=True).read_text()
    row = next(line for line in text.splitlines() if "Reliability" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1] == "2"  # requests 0 and 1 only
    assert cells[5] == "100.0" and cells[6].startswith("0.0 (Δ −100.0")
    assert "4 of 6 requests" in text and "3 of 6 requests" in text


def test_a_cell_another_process_runs_is_skipped_then_finished(tmp_path, caplog):
    from sss.files import folder_lock
    from sss.study.runner import CELL_LOCK

    study = load_study(grid(), "smoke")
    busy, free = study.cells
    # flock locks belong to an open file, so a second open in this process conflicts like another process
    with folder_lock(cell_folder(tmp_path, busy), CELL_LOCK):
        statuses = run_study(study, tmp_path, progress=False)
    assert [s.done for s in statuses] == [False, True]
    assert not (cell_folder(tmp_path, busy) / RECORDS).exists()  # nothing written beside the holder
    assert any("being run by another process" in r.getMessage() and busy.label in r.getMessage()
               for r in caplog.records)
    assert all(s.done for s in run_study(study, tmp_path, progress=False))
    assert [r["index"] for r in records_of(cell_folder(tmp_path, busy))] == [0, 1, 2]


def test_folder_lock_refuses_or_waits_for_its_holder(tmp_path, caplog):
    import logging
    import threading

    from sss.files import FolderBusy, folder_lock

    held, release, order = threading.Event(), threading.Event(), []

    def holder():
        with folder_lock(tmp_path, "x.lock"):
            held.set()
            release.wait(10)
            order.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with pytest.raises(FolderBusy, match="x.lock"):
        with folder_lock(tmp_path, "x.lock", wait=False):
            pass
    threading.Timer(0.2, release.set).start()
    with caplog.at_level(logging.INFO, logger="sss.files"):
        with folder_lock(tmp_path, "x.lock", waiting="waiting for the holder"):
            order.append("waiter in")
    thread.join()
    assert order == ["holder done", "waiter in"]
    assert "waiting for the holder" in caplog.text


def test_two_processes_share_an_out_folder_and_train_each_checkpoint_once(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps(grid(editors=["mend"])))  # two cells, each with its own checkpoint
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
              "from sss.study import load_study, run_study;"
              "run_study(load_study(sys.argv[1], 'smoke'), sys.argv[2], progress=False)")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(spec), str(tmp_path / "out")],
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert sum(log.count("INFO:sss.study.checkpoints:training mend") for log in logs) == 2, logs
    statuses = run_study(load_study(str(spec), "smoke"), tmp_path / "out", progress=False)
    assert all(s.done for s in statuses)
    for status in statuses:  # whole, in order, no request twice
        assert [r["index"] for r in records_of(status.folder)] == [0, 1, 2]
        lines = (status.folder / RECORDS).read_text().splitlines()
        assert len(lines) == 3


@pytest.mark.parametrize("bad, problem", [("duplicate", "repeats request 1"),
                                          ("out of range", "is for request 7, out of range for 4 requests")])
def test_a_damaged_record_log_stops_the_cell_naming_the_line(tmp_path, monkeypatch, bad, problem):
    study, folder = _interrupted_cell(tmp_path, monkeypatch)
    lines = (folder / RECORDS).read_text().splitlines()
    record = json.loads(lines[1])
    record["index"] = 1 if bad == "duplicate" else 7
    (folder / RECORDS).write_text("\n".join(lines + [json.dumps(record)]) + "\n")
    with pytest.raises(ValueError, match=rf"records.jsonl, record 3, {problem}: remove that line"):
        run_study(study, tmp_path, progress=False)
    assert not (folder / "done").exists()


def test_a_cell_lock_that_is_a_folder_is_named(tmp_path, monkeypatch):
    study, folder = _interrupted_cell(tmp_path, monkeypatch)
    (folder / ".sss-cell.lock").unlink()
    (folder / ".sss-cell.lock").mkdir()
    with pytest.raises(ValueError, match=r"\.sss-cell\.lock is the lock file of .* but is not a file"):
        run_study(study, tmp_path, progress=False)


def test_a_damaged_training_folder_in_a_study_names_a_recovery_the_study_has(tmp_path):
    study = load_study(grid(editors=["mend"], regularizers=["none"]), "smoke")
    train = cell_checkpoint_folder(study, study.cells[0], tmp_path) / "train"
    train.mkdir(parents=True)  # as a killed run leaves it: progress recorded, its latest/ gone
    (train / "progress.json").write_text('{"format": "sss-train-progress/1", "latest_step": 2}')
    with pytest.raises(ValueError) as raised:
        run_study(study, tmp_path, progress=False)
    message = str(raised.value)
    assert "latest is missing" in message and f"move {train} away" in message and "--no-resume" not in message
