"""A new editor is one package: written to a temporary folder and declared as an ``sss.editors``
entry point, it runs through ``evaluate``, ``sss eval`` and a smoke study with no file of sss
changed.

The toy editor fine-tunes the last block's MLP output matrix with Adam on the target NLL (GPT-2
layout), using only what an editor author uses: ``Editor``, ``EditorConfig``, ``register_editor``,
``WeightEditHandle``, ``snapshot``. The registry, the command line's choices and help, ``sss``'s
names and the study's editor options all pick it up from there.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sss import EditRequest, evaluate, load_model
from sss.editors import EDITORS

REPOSITORY = Path(__file__).resolve().parents[1]

TOY_EDITOR = textwrap.dedent('''
    """A toy editor of its own package: Adam on the last block's MLP output matrix."""
    from dataclasses import dataclass

    import torch

    from sss.data import encode_for
    from sss.editors import Editor, EditorConfig, WeightEditHandle, register_editor
    from sss.editors.core import snapshot
    from sss.losses import target_nll


    @dataclass
    class ToyConfig(EditorConfig):
        steps: int = 30
        lr: float = 0.1


    @register_editor("toy", display="Toy")
    class ToyEditor(Editor):
        config_class = ToyConfig
        study_options = {"smoke": {"steps": 4}}

        def _apply(self, requests):
            model = self.base_model
            name = f"transformer.h.{model.config.n_layer - 1}.mlp.c_proj.weight"
            originals = snapshot(model, [name])
            weight = dict(model.named_parameters())[name]
            batch = encode_for(model, self.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
            optimizer = torch.optim.Adam([weight], lr=self.config.lr)
            for _ in range(self.config.steps):
                optimizer.zero_grad()
                target_nll(model(**batch.model_inputs).logits, batch).mean().backward()
                optimizer.step()
            model.zero_grad(set_to_none=True)
            return WeightEditHandle(model, originals, requests, self.name, {"steps": self.config.steps})
''')

REQUESTS = [EditRequest("The capital of France is", "Rome", target_true="Paris",
                        rephrase_prompts=("France's capital city is",)),
            EditRequest("The Eiffel Tower stands in", "Berlin", target_true="Paris")]


def install_plugin(site: Path, distribution: str, module: str, source: str, entry: str) -> None:
    """A package and the metadata pip would write for it: ``[sss.editors] entry = module``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"  # as pip names it
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sss.editors]\n{entry} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    install_plugin(folder, "sss-toy", "sss_toy", TOY_EDITOR, "toy")
    install_plugin(folder, "sss-broken", "sss_broken", "raise ImportError('this plugin is broken')\n", "broken")
    return folder


def run_sss(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def requests_file(folder: Path) -> Path:
    path = folder / "requests.json"
    path.write_text(json.dumps([{"case_id": i, "prompt": r.prompt, "target_new": r.target_new,
                                 "ground_truth": r.target_true, "subject": r.prompt.split()[-2],
                                 "rephrase_prompt": r.prompt, "locality_prompt": "The sky is",
                                 "locality_ground_truth": "blue"} for i, r in enumerate(REQUESTS)]))
    return path


def test_an_installed_editor_package_joins_the_library_and_the_command_line(site, tmp_path):
    names = run_sss(site, "-c", "import sss, sss.editors as e; print(e.editor_names(), 'ToyEditor' in sss.__all__, "
                                "sss.ToyEditor.display_name, e.ToyConfig().steps)", cwd=tmp_path)
    assert names.returncode == 0, names.stderr
    assert names.stdout.split("\n")[0] == "['ft-l', 'memit', 'mend', 'rome', 'serac', 'toy'] True Toy 30"
    assert "editor plugin 'broken'" in names.stderr and "this plugin is broken" in names.stderr

    usage = run_sss(site, "-m", "sss", "eval", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "ft-l, memit, mend, rome, serac, toy" in " ".join(usage.stdout.split())

    out = tmp_path / "eval"
    run = run_sss(site, "-m", "sss", "eval", "--editor", "toy", "--model", "tiny-gpt2", "--data",
                  f"{requests_file(tmp_path)}:counterfact", "--option", "steps=5", "--no-generate", "--out", str(out),
                  "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "| Metric | Unedited | Toy |" in run.stdout
    (report_path,) = sorted(out.glob("results_toy_*.json"))
    report = json.loads(report_path.read_text())
    assert report["editor"]["editor"] == "toy" and report["editor"]["config"] == {"steps": 5, "lr": 0.1}
    assert len(report["records"]) == 2


def test_a_smoke_study_runs_an_installed_editor_with_its_declared_options(site, tmp_path):
    study = tmp_path / "toy.toml"
    study.write_text('name = "toy-smoke"\neditors = "all"\ndatasets = ["demo"]\nregularizers = ["none"]\n'
                     '[scales.smoke]\neval_requests = 2\n')
    run = run_sss(site, "-m", "sss", "study", str(study), "--scale", "smoke", "--out", str(tmp_path / "out"),
                  "--only", "toy-*", "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (cell,) = sorted((tmp_path / "out" / "toy-smoke").glob("toy-demo-*"))
    config = json.loads((cell / "cell.json").read_text())["config"]
    assert config["editor"] == "toy" and config["editor_options"] == {"steps": 4}  # ToyEditor.study_options
    records = json.loads((cell / "report.json").read_text())["records"]
    assert len(records) == 2 and (cell / "done").exists()


@pytest.fixture
def toy_editor(site):
    """The toy editor imported in this process, and forgotten again (it must not join other tests' studies)."""
    sys.path.insert(0, str(site))
    try:
        yield importlib.import_module("sss_toy").ToyEditor
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("sss_toy", None)
        EDITORS.pop("toy", None)


def test_evaluate_runs_the_toy_editor_and_restores_the_model(toy_editor, one_thread):
    model, tokenizer = load_model("tiny-gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = evaluate(toy_editor(model, tokenizer, progress=False), REQUESTS, generate=False, progress=False)
    assert results.label == "Toy" and results.editor["config"] == {"steps": 30, "lr": 0.1}
    # The edit did something: the random model never predicts the new targets, the toy edit does.
    assert results.value("reliability", "token_acc", "pre") == 0.0
    assert results.value("reliability", "token_acc") == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
