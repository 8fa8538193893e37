"""A fourth editor in one file: registered here, it runs through ``evaluate`` and ``sss eval``.

Nothing outside this file knows the toy editor: it only uses the public pieces an editor author
uses (``Editor``, ``EditorConfig``, ``register_editor``, ``WeightEditHandle``, ``snapshot``).
It fine-tunes the last block's MLP output matrix with Adam on the target NLL (GPT-2 layout).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from sss import EditRequest, cli, evaluate, load_model
from sss.data import encode_pairs
from sss.editors import Editor, EditorConfig, WeightEditHandle, editor_class, register_editor
from sss.editors.core import snapshot
from sss.losses import target_nll

REQUESTS = [EditRequest("The capital of France is", "Rome", target_true="Paris",
                        rephrase_prompts=("France's capital city is",)),
            EditRequest("The Eiffel Tower stands in", "Berlin", target_true="Paris")]


@dataclass
class ToyConfig(EditorConfig):
    steps: int = 30
    lr: float = 0.1


@register_editor("toy", display="Toy")
class ToyEditor(Editor):
    config_class = ToyConfig

    def _apply(self, requests):
        model = self.base_model
        name = f"transformer.h.{model.config.n_layer - 1}.mlp.c_proj.weight"
        originals = snapshot(model, [name])
        weight = dict(model.named_parameters())[name]
        batch = encode_pairs(self.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests],
                             device=self.device)
        optimizer = torch.optim.Adam([weight], lr=self.config.lr)
        for _ in range(self.config.steps):
            optimizer.zero_grad()
            loss = target_nll(model(**batch.model_inputs).logits, batch).mean()
            loss.backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)
        return WeightEditHandle(model, originals, requests, self.name, {"steps": self.config.steps})


def test_registry_finds_the_toy_editor():
    assert editor_class("toy") is ToyEditor and ToyEditor.display_name == "Toy"


def test_evaluate_runs_the_toy_editor_and_restores_the_model(one_thread):
    model, tokenizer = load_model("tiny-gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = evaluate(ToyEditor(model, tokenizer, progress=False), REQUESTS, generate=False, progress=False)
    assert results.label == "Toy" and results.editor["config"] == {"steps": 30, "lr": 0.1}
    # The edit did something: the random model never predicts the new targets, the toy edit does.
    assert results.value("reliability", "token_acc", "pre") == 0.0
    assert results.value("reliability", "token_acc") == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_sss_eval_runs_the_toy_editor(tmp_path, capsys, one_thread):
    out = tmp_path / "toy"
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([{"case_id": i, "prompt": r.prompt, "target_new": r.target_new,
                                 "ground_truth": r.target_true, "subject": r.prompt.split()[-2],
                                 "rephrase_prompt": r.prompt, "locality_prompt": "The sky is",
                                 "locality_ground_truth": "blue"} for i, r in enumerate(REQUESTS)]))
    code = cli.main(["eval", "--editor", "toy", "--model", "tiny-gpt2", "--data", f"{data}:counterfact",
                     "--option", "steps=5", "--no-generate", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "| Metric | Unedited | Toy |" in capsys.readouterr().out
    reports = sorted(out.glob("results_toy_*.json"))  # results_<label>_<hash of the run>.json
    assert len(reports) == 1, [p.name for p in out.iterdir()]
    report = json.loads(reports[0].read_text())
    assert report["editor"]["editor"] == "toy" and report["editor"]["config"]["steps"] == 5
    assert len(report["records"]) == 2
