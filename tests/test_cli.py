"""The ``sss`` command: help texts, ``sss eval`` and ``sss demo`` on tiny settings, torchrun sharding."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sss import cli

REPO = Path(__file__).resolve().parents[1]


def counterfact_file(path: Path, n: int) -> Path:
    """``n`` small records in EasyEdit's CounterFact format, written by the test."""
    countries = ["France", "Spain", "Italy", "Norway", "Chile", "Kenya", "Peru", "Japan"]
    capitals = ["Paris", "Madrid", "Rome", "Oslo", "Santiago", "Nairobi", "Lima", "Tokyo"]
    records = [{"case_id": i, "prompt": f"The capital of {c} is", "target_new": capitals[(i + 1) % len(capitals)],
                "subject": c, "ground_truth": capitals[i], "rephrase_prompt": f"{c}'s capital city is",
                "locality_prompt": f"The language spoken in {countries[(i + 2) % len(countries)]} is",
                "locality_ground_truth": "English"}
               for i, c in enumerate(countries[:n])]
    path.write_text(json.dumps(records))
    return path


def report_named(folder: Path, stem: str) -> Path:
    """The one report whose name is ``stem`` plus the run's hash."""
    (found,) = [p for p in folder.glob("results_*.json") if p.name.rsplit("_", 1)[0] == stem]
    return found


def subparsers_of(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_is_explained(capsys):
    parser = cli.build_parser()
    commands = subparsers_of(parser)
    assert {"eval", "demo"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"sss {name} {action.option_strings} has no help"
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0
    assert "--sss-c" in capsys.readouterr().out


def test_bad_input_exits_with_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--model", "tiny-gpt2", "--data", str(counterfact_file(tmp_path / "cf.json", 1)),
                  "--option", "steps", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--option takes KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--model", "tiny-gpt2", "--editor", "nope", "--data",
                  str(tmp_path / "cf.json"), "--out", str(tmp_path / "out")])
    assert "unknown editor 'nope'" in capsys.readouterr().err


def test_parse_options():
    assert cli.parse_options(["steps=3", "layers=[1]", "objective=target_new"]) == {
        "steps": 3, "layers": [1], "objective": "target_new"}


def test_demo_shows_paired_intervals_names_its_requests_and_logs_briefly_off_a_terminal(tmp_path):
    """The main job as CI or a redirected run sees it: stderr is a file, so progress is a few log
    lines (not a redraw per FT-L step), and the table carries each paired difference."""
    out, limit = tmp_path / "demo", 6
    with open(tmp_path / "stderr.txt", "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "sss", "demo", "--model", "tiny-gpt2", "--limit", str(limit),
                               "--no-generate", "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=stderr, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = (tmp_path / "stderr.txt").read_text()
    assert done.returncode == 0, log
    assert len(log.splitlines()) < 3 * limit and "\r" not in log, log
    assert f"single edits: {limit}/{limit} edits (100%)" in log
    printed = done.stdout
    assert "| Metric | Unedited | FT-L | FT-L w/ SSS (C=0.9) |" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| Reliability (token_acc)")]
    assert rows and "(\u0394 " in rows[0] and ", p " in rows[0]  # the with-SSS column: Δ [low, high], p
    assert "difference resolved" in printed or "Resolved at n" in printed
    assert "sss study studies/table1.toml --scale cpu" in printed
    with_sss = json.loads(report_named(out, "results_ft-l_sss_c=0.9").read_text())
    ids = with_sss["extra"]["request_ids"]
    assert len(ids) == limit and ids == [r["case_id"] for r in with_sss["records"]]
    assert f"requests: {', '.join(ids)}" in printed
    assert with_sss["regularizer"]["C"] == 0.9 and with_sss["data"] == "demo" and with_sss["model"] == "tiny-gpt2"
    assert "(\u0394 " in (out / "table.md").read_text() and (out / "comparison.png").stat().st_size > 1000


def test_eval_sweep_and_sequential_figures(tmp_path, capsys):
    data = counterfact_file(tmp_path / "cf.json", 2)
    out = tmp_path / "eval"
    code = cli.main(["eval", "--model", "tiny-gpt2", "--data", f"{data}:counterfact", "--mode", "sequential",
                     "--checkpoints", "1", "--sss-c", "0.5", "0.9", "--baseline", "--option", "steps=2",
                     "--no-generate", "--out", str(out), "--no-progress"])
    assert code == 0
    assert {p.name.rsplit("_", 1)[0] if p.name.startswith("results_") else p.name for p in out.iterdir()} == {
        "results_ft-l", "results_ft-l_sss_c=0.5", "results_ft-l_sss_c=0.9", "table.md",
        "comparison.png", "sequential.png", "c_sweep.png", ".sss-reports.lock"}
    report = json.loads(report_named(out, "results_ft-l_sss_c=0.5").read_text())
    assert report["editor"]["config"]["steps"] == 2
    assert [point["edits"] for point in report["curve"]] == [1, 2]
    assert report["settings"]["generate"] is False


def _records(folder: Path):
    report = json.loads(report_named(folder, "results_ft-l").read_text())
    return sorted(report["records"], key=lambda r: r["index"]), report


def test_torchrun_two_processes_equal_one(tmp_path):
    """Two gloo ranks each evaluate half of 6 requests; rank 0's merged report equals one process's."""
    data = counterfact_file(tmp_path / "cf.json", 6)
    args = ["-m", "sss", "eval", "--model", "tiny-gpt2", "--data", f"{data}:counterfact", "--no-progress",
            "--device", "cpu"]
    # One thread per process on both sides, so no result depends on how a reduction was split.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    records_one, report_one = _records(tmp_path / "one")
    records_two, report_two = _records(tmp_path / "two")
    assert report_two["settings"]["world_size"] == 2 and report_one["settings"]["world_size"] == 1
    assert [r["index"] for r in records_two] == list(range(6))
    assert records_two == records_one
    assert report_two["summary"] == report_one["summary"]


def test_sss_target_takes_a_name_or_a_block_index(capsys):
    def target(value):
        return cli.build_parser().parse_args(["eval", "--sss-target", value]).sss_target

    assert target("last_hidden") == "last_hidden" and target("input_embeds") == "input_embeds"
    assert target("10") == 10 and target("-1") == -1
    with pytest.raises(SystemExit):
        target("middle")
    assert "block index, got 'middle'" in capsys.readouterr().err


def test_sss_target_n_is_the_residual_stream_entering_block_n(tiny_llama):
    """What the help promises is what the regularizer built from the option reads: the hidden
    states entering block N, i.e. transformers' ``hidden_states[N]`` (the embeddings are [0])."""
    import torch

    from sss.cli.options import regularizer_from_args
    from sss.data import encode_pairs

    model, tokenizer = tiny_llama
    args = cli.build_parser().parse_args(["eval", "--sss-c", "0.9", "--sss-target", "1"])
    regularizer = regularizer_from_args(args, 0.9)
    batch = encode_pairs(tokenizer, ["The capital of France is"], ["Paris"])
    with torch.no_grad():
        expected = model(**batch.model_inputs, output_hidden_states=True).hidden_states
    _, embeddings = regularizer.forward(model, batch)
    assert torch.equal(embeddings.detach(), expected[1]) and not torch.equal(expected[1], expected[2])
    usage = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "the hidden states entering block N, i.e. its input" in usage


def test_baseline_without_sss_c_is_refused_before_the_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--model", "no/such-model", "--data", str(counterfact_file(tmp_path / "cf.json", 1)),
                  "--baseline", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--baseline compares a run with SSS against one without it: give --sss-c C too" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_runs_sharing_an_out_folder_keep_every_report_and_the_table_shows_them_all(tmp_path):
    """Two concurrent `sss eval` runs (seeds 0 and 1), then one with SSS, all into one --out."""
    out = tmp_path / "shared"
    args = ["-m", "sss", "eval", "--model", "tiny-gpt2", "--data", "demo", "--limit", "2", "--option", "steps=2",
            "--no-generate", "--no-progress", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, *args, "--seed", seed], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in ("0", "1")]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("results_*.json"))]
    assert sorted(r["seed"] for r in reports) == [0, 1]
    table = (out / "table.md").read_text()
    assert "| Metric | Unedited | FT-L [seed=0] | FT-L [seed=1] |" in table
    assert cli.main(["eval", "--model", "tiny-gpt2", "--data", "demo", "--limit", "2", "--option", "steps=2",
                     "--no-generate", "--no-progress", "--sss-c", "0.9", "--out", str(out)]) == 0
    assert len(list(out.glob("results_*.json"))) == 3
    table = (out / "table.md").read_text()
    assert table.count("2 requests · mode single") == 1  # the same requests: one table, a column per report
    assert "FT-L [seed=0] | FT-L [seed=1] | FT-L w/ SSS (C=0.9) |" in table


def test_edits_at_once_trains_single_edits_together_and_refuses_other_modes(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["eval", "--model", "tiny-llama", "--data", "demo", "--limit", "3", "--option", "steps=2",
              "--no-generate", "--no-progress"]
    assert cli.main(common + ["--edits-at-once", "3", "--out", str(out / "together")]) == 0
    assert cli.main(common + ["--out", str(out / "alone")]) == 0
    together, alone = (json.loads(next((out / side).glob("results_*.json")).read_text()) for side in ("together", "alone"))
    assert together["settings"]["edits_at_once"] == 3 and "edits_at_once" not in alone["settings"]
    assert [r["post"] for r in together["records"]] == [r["post"] for r in alone["records"]]
    with pytest.raises(SystemExit):
        cli.main(common + ["--mode", "sequential", "--edits-at-once", "2", "--out", str(out / "bad")])
    assert "--edits-at-once applies to --mode single" in capsys.readouterr().err
