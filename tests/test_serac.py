"""SERAC: memory, routing, the causal-LM wrapper, checkpoints, and training on tiny-gpt2.

Most tests use a hand-built, parameter-free scope classifier (bag-of-words cosine) so that
routing is known in advance; the training test uses the bundled MiniLM, frozen.
"""
from __future__ import annotations

import json
import math
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

from sss import SERAC, EditRequest, LocalityProbe, SSSRegularizer, load_model
from sss.data import encode_pairs, encode_prompts, load_data
from sss.editors.serac import EditMemory, ScopeClassifier
from sss.editors.serac.conditioning import edit_text, prefix_ids
from sss.eval.metrics import argmax_agreement as answer_agreement, token_accuracy
from sss.train import TrainConfig


class BagOfWordsClassifier(ScopeClassifier):
    """In scope when the word sets overlap: logit = gain * (cos(bag(input), bag(edit)) - centre)."""

    def __init__(self, gain: float = 40.0, centre: float = 0.6, dim: int = 512):
        super().__init__()
        self.gain, self.centre, self.dim = gain, centre, dim
        self.key_calls = 0  # texts encoded as keys

    def bag(self, texts):
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace("'s", " ").split():
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        return F.normalize(out, dim=-1)

    def keys(self, edit_texts):
        self.key_calls += len(edit_texts)
        return self.bag(edit_texts)

    def logits(self, inputs, edit_texts, keys=None):
        keys = self.bag(edit_texts) if keys is None else keys
        return self.gain * (self.bag(inputs) @ keys.T - self.centre)


class ConstantClassifier(ScopeClassifier):
    """Every input is in the scope of every edit with the same probability."""

    def __init__(self, probability: float):
        super().__init__()
        self.logit = math.log(probability / (1 - probability))

    def logits(self, inputs, edit_texts, keys=None):
        return torch.full((len(inputs), len(edit_texts)), self.logit)


FRANCE = EditRequest("The capital of France is", "Rome", rephrase_prompts=("France's capital city is",),
                     locality=(LocalityProbe("Who wrote Hamlet?", "Shakespeare"),))
DARRIEUX = EditRequest("The mother tongue of Danielle Darrieux is", "English")
EINSTEIN = EditRequest("Albert Einstein was born in the country of", "Spain")
UNRELATED = ("Who wrote Hamlet?", "Shakespeare")


def serac(model_and_tokenizer, classifier=None, **options) -> SERAC:
    model, tokenizer = model_and_tokenizer
    return SERAC(model, tokenizer, scope_classifier=classifier or BagOfWordsClassifier(), progress=False, **options)


def logits_of(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


# ----------------------------------------------------------------------------------------------
# The routed model


def test_empty_memory_gives_exactly_the_base_models_logits_and_generations(tiny_model):
    model, tokenizer = tiny_model
    editor = serac(tiny_model, ConstantClassifier(0.99))
    batch = encode_pairs(tokenizer, [FRANCE.prompt, UNRELATED[0]], [FRANCE.target_new, UNRELATED[1]])
    assert torch.equal(logits_of(editor.model, batch), logits_of(model, batch))
    prompts = encode_prompts(tokenizer, [FRANCE.prompt, UNRELATED[0]])
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(editor.model.generate(**prompts.model_inputs, **kwargs),
                       model.generate(**prompts.model_inputs, **kwargs))
    with editor.edit([FRANCE]):  # after restore the memory is empty again: base logits once more
        pass
    assert torch.equal(logits_of(editor.model, batch), logits_of(model, batch))


@pytest.mark.parametrize("probability, threshold, routed", [(0.6, 0.5, True), (0.4, 0.5, False),
                                                            (0.6, 0.7, False), (0.8, 0.7, True)])
def test_routing_is_decided_by_the_threshold(tiny_gpt2, probability, threshold, routed):
    model, tokenizer = tiny_gpt2
    editor = serac(tiny_gpt2, ConstantClassifier(probability), threshold=threshold)
    editor.edit([FRANCE])
    routing = editor.model.route([FRANCE.prompt, UNRELATED[0]])
    assert [entry is not None for entry in routing.entries] == [routed, routed]
    assert torch.allclose(routing.probabilities, torch.tensor([probability] * 2))
    batch = encode_pairs(tokenizer, [UNRELATED[0]], [UNRELATED[1]])
    assert torch.equal(logits_of(editor.model, batch), logits_of(model, batch)) is not routed


@pytest.mark.parametrize("padding", ["right", "left"])
def test_routed_rows_are_the_counterfactual_model_reading_edit_then_input(tiny_model, padding):
    model, tokenizer = tiny_model
    editor = serac(tiny_model)
    # Make the counterfactual model visibly different from the base model.
    with torch.no_grad():
        for param in editor.counterfactual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    editor.edit([FRANCE, DARRIEUX])
    prompts = [FRANCE.rephrase_prompts[0], UNRELATED[0], DARRIEUX.prompt]
    if padding == "right":
        batch = encode_pairs(tokenizer, prompts, [FRANCE.target_new, UNRELATED[1], DARRIEUX.target_new])
    else:
        batch = encode_prompts(tokenizer, prompts)
    routed = logits_of(editor.model, batch)
    base = logits_of(model, batch)
    assert torch.equal(routed[1], base[1])  # the unrelated question stays with the base model
    for row, request in ((0, FRANCE), (2, DARRIEUX)):
        real = batch.attention_mask[row].bool()
        prefix = prefix_ids(tokenizer, edit_text(request), "\n")
        ids = torch.tensor([prefix + batch.input_ids[row][real].tolist()])
        expected = logits_of(editor.counterfactual, encode_like(ids))[0, len(prefix):]
        assert torch.allclose(routed[row][real], expected, atol=1e-5)
        assert not torch.allclose(routed[row][real], base[row][real], atol=1e-3)


def encode_like(ids):
    class Batch:
        input_ids = ids
        attention_mask = torch.ones_like(ids)
    return Batch


def test_generate_routes_once_on_the_prompt_and_keeps_the_input_columns(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    editor = serac(tiny_gpt2)
    with torch.no_grad():
        for param in editor.counterfactual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    editor.edit([FRANCE])
    batch = encode_prompts(tokenizer, [UNRELATED[0], FRANCE.prompt])
    out = editor.model.generate(**batch.model_inputs, max_new_tokens=4, do_sample=False)
    width = batch.input_ids.shape[1]
    assert out.shape == (2, width + 4)
    assert torch.equal(out[:, :width], batch.input_ids)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    alone = encode_prompts(tokenizer, [UNRELATED[0]])
    assert torch.equal(out[0, width:], model.generate(**alone.model_inputs, **kwargs)[0, alone.input_ids.shape[1]:])
    conditioned = torch.tensor([prefix_ids(tokenizer, edit_text(FRANCE), "\n") + tokenizer(FRANCE.prompt)["input_ids"]])
    expected = editor.counterfactual.generate(input_ids=conditioned, attention_mask=torch.ones_like(conditioned),
                                              **kwargs)[0, conditioned.shape[1]:]
    assert torch.equal(out[1, width:], expected)


def test_the_wrapper_exposes_what_evaluation_code_reads(tiny_gpt2):
    model, _ = tiny_gpt2
    editor = serac(tiny_gpt2)
    assert editor.model.config is model.config
    assert editor.model.get_input_embeddings() is model.get_input_embeddings()
    assert editor.model.get_output_embeddings() is model.get_output_embeddings()
    with pytest.raises(ValueError, match="inputs_embeds"):
        editor.model(input_ids=torch.tensor([[1, 2]]), inputs_embeds=torch.zeros(1, 2, 64))


def test_evaluation_protocols_run_on_the_routed_model_and_restore_the_memory(tiny_gpt2):
    from sss import evaluate

    editor = serac(tiny_gpt2)
    for mode in ("single", "sequential"):
        results = evaluate(editor, [FRANCE, DARRIEUX, EINSTEIN], mode=mode, progress=False)
        # The hand-built classifier keeps "Who wrote Hamlet?" out of every edit's scope: the
        # base model answers it, so it agrees with the unedited model exactly.
        assert results.value("locality", "agreement") == 1.0
        assert len(editor.memory) == 0


def test_cross_encoder_scores_every_pair_and_learns():
    from sss.editors.serac import CrossEncoderScopeClassifier, SentenceEncoder

    classifier = CrossEncoderScopeClassifier(SentenceEncoder.load())
    inputs, edits = [FRANCE.prompt, UNRELATED[0], DARRIEUX.prompt], [edit_text(FRANCE), edit_text(DARRIEUX)]
    logits = classifier.logits(inputs, edits)
    assert logits.shape == (3, 2)
    assert classifier.keys(edits) is None  # nothing to cache: every query reads every pair
    # Untrained, it routes nothing; its head is trainable.
    assert (torch.sigmoid(logits) < 0.5).all()
    F.binary_cross_entropy_with_logits(logits, torch.eye(3, 2)).backward()
    assert classifier.head.weight.grad is not None and classifier.head.weight.grad.abs().sum() > 0
    # Scoring pair by pair gives the same matrix as the batched call.
    with torch.no_grad():
        one = classifier.logits([inputs[2]], [edits[1]])
    assert torch.allclose(one[0, 0], logits[2, 1].detach(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Memory and handles


def test_restore_after_three_stacked_edits_leaves_the_memory_as_before_each(tiny_gpt2):
    editor = serac(tiny_gpt2)
    states, handles = [], []
    for requests in ([FRANCE], [DARRIEUX, EINSTEIN], [FRANCE]):  # the same request twice is two entries
        states.append([(e.id, e.text, e.request) for e in editor.memory])
        handles.append(editor.edit(requests))
    assert len(editor.memory) == 4
    with pytest.raises(RuntimeError, match="newest first"):
        handles[0].restore()
    for handle, before in zip(reversed(handles), reversed(states)):
        handle.restore()
        assert [(e.id, e.text, e.request) for e in editor.memory] == before
    with pytest.raises(RuntimeError, match="already been restored"):
        handles[-1].restore()


def test_handles_of_two_editors_do_not_block_each_other(tiny_gpt2):
    first, second = serac(tiny_gpt2), serac(tiny_gpt2)
    a = first.edit([FRANCE])
    second.edit([DARRIEUX])
    a.restore()  # another memory's newer edit is no reason to refuse
    assert len(first.memory) == 0 and len(second.memory) == 1


def test_memory_encodes_only_new_entries_and_rekeys_after_the_classifier_changes(tiny_gpt2):
    classifier = BagOfWordsClassifier()
    classifier.scale = torch.nn.Parameter(torch.ones(()))  # a weight whose change must invalidate keys
    editor = serac(tiny_gpt2, classifier)
    editor.edit([FRANCE, DARRIEUX])
    editor.edit([EINSTEIN])
    assert classifier.key_calls == 3
    editor.model.route([FRANCE.prompt])
    assert classifier.key_calls == 3
    with torch.no_grad():
        classifier.scale.mul_(2.0)
    editor.model.route([FRANCE.prompt])
    assert classifier.key_calls == 6


def test_memory_save_and_load_round_trip(tiny_gpt2, tmp_path):
    classifier = BagOfWordsClassifier()
    editor = serac(tiny_gpt2, classifier)
    editor.edit([FRANCE, DARRIEUX])
    handle = editor.edit([EINSTEIN])
    handle.restore()
    editor.edit([EINSTEIN])
    keys = editor.memory.keys_for(classifier).clone()
    editor.save_memory(tmp_path / "memory")
    assert {p.name for p in (tmp_path / "memory").iterdir()} == {"memory.json", "memory_keys.safetensors"}

    other = serac(tiny_gpt2, classifier)
    other.load_memory(tmp_path / "memory")
    assert [(e.id, e.text, e.request) for e in other.memory] == [(e.id, e.text, e.request) for e in editor.memory]
    calls = classifier.key_calls
    assert torch.equal(other.memory.keys_for(classifier), keys)
    assert classifier.key_calls == calls  # the saved keys were reused, not recomputed
    # New entries never reuse a saved id.
    assert other.edit([FRANCE]).entry_ids == [max(e.id for e in editor.memory) + 1]
    with pytest.raises(ValueError, match="no SERAC memory"):
        EditMemory.load(tmp_path)


# ----------------------------------------------------------------------------------------------
# Training objective, checkpoints, configuration


def test_config_defaults_and_bad_values():
    from sss.editors.serac import SERACConfig

    config = SERACConfig()
    assert (config.lr, config.c_e, config.threshold, config.classifier) == (1e-5, 0.1, 0.5, "embedding")
    for bad in ({"threshold": 1.5}, {"classifier": "knn"}, {"lr": 0.0}, {"c_e": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SERACConfig(**bad)


def test_sss_turns_the_counterfactual_objective_into_eq_10(tiny_gpt2):
    from sss.editors.serac import objective
    from sss.train import Episode

    model, tokenizer = tiny_gpt2
    episode = Episode((FRANCE, DARRIEUX), (FRANCE.locality[0], LocalityProbe(*UNRELATED)))
    plain = serac(tiny_gpt2)
    loss, logs = plain.training_loss(episode)
    assert "penalty" not in logs
    assert loss.item() == pytest.approx(logs["cf_loss_ori"] + logs["cls_loss"] * plain.config.c_cls, rel=1e-5)

    regularizer = SSSRegularizer(C=0.9)
    with_sss = serac(tiny_gpt2, regularizer=regularizer)
    loss_sss, logs_sss = with_sss.training_loss(episode)
    assert logs_sss["cf_loss_ori"] == pytest.approx(logs["cf_loss_ori"], rel=1e-5)
    expected = logs_sss["cls_loss"] + 0.1 * logs["cf_loss_ori"] + 0.9 * logs_sss["penalty"]
    assert loss_sss.item() == pytest.approx(expected, rel=1e-5)
    # The penalty's own gradient reaches the counterfactual model (second order).
    batches = objective.counterfactual_batches(tokenizer, with_sss.counterfactual, episode.requests,
                                               episode.locality, "\n")
    from sss.models import second_order_attention
    with second_order_attention(with_sss.counterfactual):
        _, _, penalty = regularizer.loss_and_penalty(with_sss.counterfactual, batches.edits)
    penalty.backward()
    grads = [p.grad for p in with_sss.counterfactual.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters())  # the base model is never trained
    groups = {g["name"]: g["params"] for g in with_sss.param_groups()}
    trained = {id(p) for params in groups.values() for p in params}
    assert not trained & {id(p) for p in model.parameters()}
    assert {id(p) for p in with_sss.counterfactual.parameters()} <= trained


def test_checkpoint_round_trip_and_refusal(tiny_gpt2, tiny_llama, tmp_path):
    model, tokenizer = tiny_gpt2
    editor = SERAC(model, tokenizer, progress=False, threshold=0.4)
    with torch.no_grad():
        for param in list(editor.counterfactual.parameters())[:3] + editor.classifier.head_parameters():
            param.add_(0.01)
    editor.save(tmp_path / "serac")
    loaded = SERAC.load(tmp_path / "serac", *load_model("tiny-gpt2", seed=0), progress=False)
    assert loaded.config.threshold == 0.4
    saved, restored = editor.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    with pytest.raises(ValueError, match="architecture"):
        SERAC.load(tmp_path / "serac", *tiny_llama)


def test_cf_layers_trains_and_saves_only_the_last_blocks(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    editor = serac(tiny_llama, cf_layers=1)
    trained = [n for n, p in editor.counterfactual.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(("model.layers.1.", "model.norm.")) for n in trained)
    group = next(g for g in editor.param_groups() if g["name"] == "counterfactual")
    assert len(group["params"]) == len(trained)
    saved = [k for k in editor.state_dict() if k.startswith("counterfactual.")]
    assert sorted(saved) == sorted(f"counterfactual.{n}" for n in trained)
    with pytest.raises(ValueError, match="cf_layers=3"):
        serac(tiny_llama, cf_layers=3)


def test_command_line_trains_and_evaluates_serac(tmp_path, one_thread):
    from sss import cli

    run = tmp_path / "run"
    assert cli.main(["train", "serac", "--model", "tiny-gpt2", "--train", "demo", "--limit", "12", "--val-fraction", "0.25", "--out", str(run),
                     "--edit-batch-size", "2", "--episodes-per-step", "1", "--max-steps", "2", "--val-every", "2",
                     "--val-episodes", "1", "--option", "train_encoder=false", "--no-progress"]) == 0
    assert (run / "best" / "weights.safetensors").exists()
    saved = json.loads((run / "best" / "config.json").read_text())["trainable"]
    assert saved["editor"] == "serac" and saved["base_model"] == "tiny-gpt2"
    out = tmp_path / "eval"
    assert cli.main(["eval", "--editor", "serac", "--checkpoint", str(run), "--model", "tiny-gpt2", "--data", "demo",
                     "--limit", "2", "--option", "threshold=0.7", "--out", str(out), "--no-progress"]) == 0
    (path,) = sorted(out.glob("results_*.json"))  # one run, one report
    report = json.loads(path.read_text())
    assert report["editor"]["editor"] == "serac" and report["editor"]["config"]["threshold"] == 0.7
    assert report["extra"]["checkpoint"] == str(run.resolve())
    assert len(report["records"]) == 2 and {r["prompt"] for r in report["records"]} <= {
        r.prompt for r in load_data("demo")}


# ----------------------------------------------------------------------------------------------
# Training on tiny-gpt2

FIRST = ("Alice Bob Carol David Emma Frank Grace Henry Jack Karen Louis Maria Nathan Olivia Peter Quinn Rachel "
         "Steven Tina Victor Wendy Xavier Zach").split()
LAST = ("Brennan Castillo Dawson Eriksen Fischer Garner Holloway Ingram Jensen Keller Lindqvist Moreau Novak "
        "Okafor Petrov Quist Romero Sato Tanaka Ulrich Vance Weber Young").split()
RELATIONS = (("The favorite color of {} is", "{}'s favorite color is",
              "red blue green yellow black white pink brown orange purple".split()),
             ("{} lives in the city of", "The hometown of {} is",
              "Paris London Berlin Madrid Rome Tokyo Cairo Moscow Lima Oslo".split()),
             ("{} works as a", "The profession of {} is",
              "doctor teacher lawyer farmer pilot nurse chef singer painter writer".split()))
FACTS = (("The sun rises in the", "east"), ("The opposite of hot is", "cold"), ("A week has seven", "days"),
         ("Bees make", "honey"), ("Water freezes at zero", "degrees"))


def synthetic_requests(n: int, seed: int):
    """Made-up people with one-token answers; two locality probes each: another person's fact
    of some relation (a hard negative) and a general fact."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        subject, other = (f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(2))
        prompt, rephrase, answers = rng.choice(RELATIONS)
        other_prompt, _, other_answers = rng.choice(RELATIONS)
        locality = (LocalityProbe(other_prompt.format(other), rng.choice(other_answers)),
                    LocalityProbe(*rng.choice(FACTS)))
        requests.append(EditRequest(prompt.format(subject), rng.choice(answers), subject=subject,
                                    rephrase_prompts=(rephrase.format(subject),), locality=locality))
    return requests


def heldout_scores(editor, model, tokenizer, requests):
    """Single-edit protocol: edit, measure reliability/generality/locality, restore."""
    reliability, generality, locality = [], [], []
    for request in requests:
        with editor.edit([request]):
            batch = encode_pairs(tokenizer, [request.prompt, request.rephrase_prompts[0]], [request.target_new] * 2)
            accuracy = token_accuracy(logits_of(editor.model, batch), batch)
            reliability.append(float(accuracy[0]))
            generality.append(float(accuracy[1]))
            probes = encode_pairs(tokenizer, [p.prompt for p in request.locality], [p.answer for p in request.locality])
            locality += answer_agreement(logits_of(model, probes), logits_of(editor.model, probes), probes).tolist()
    return [sum(values) / len(values) for values in (reliability, generality, locality)]


def test_training_lifts_heldout_reliability_on_tiny_gpt2_and_keeps_locality(tiny_gpt2, tmp_path, one_thread):
    model, tokenizer = tiny_gpt2
    train = synthetic_requests(400, seed=1)
    seen = {r.prompt for r in train}
    heldout = [r for r in synthetic_requests(60, seed=2) if r.prompt not in seen][:30]  # new (person, relation)
    # A random 2-block model has to learn to copy the answer out of the edit in front of the
    # input: that takes a large learning rate and a few hundred steps (the copy appears after a
    # plateau at the relation's answer distribution: held-out reliability 0.63 / 0.83 / 0.90 /
    # 1.0 after 300 / 400 / 500 / 600 steps when this was written). The locality term is off (c_loc=0) because
    # it slows that down; locality comes from the classifier, whose frozen MiniLM encoder
    # (embeddings cached) keeps the run cheap.
    editor = SERAC(model, tokenizer, train_encoder=False, c_e=1.0, c_loc=0.0, progress=False)
    before = heldout_scores(editor, model, tokenizer, heldout)
    editor.fit(train, [], TrainConfig(edit_batch_size=8, episodes_per_step=1, max_steps=600, progress=False,
                                      log_every=50, lr={"counterfactual": 5e-3}, out_dir=str(tmp_path / "run")))
    reliability, generality, locality = heldout_scores(editor, model, tokenizer, heldout)
    assert before[0] < 0.2
    assert reliability >= 0.9, (before, reliability, generality, locality)
    assert locality >= 0.9
    assert (tmp_path / "run" / "latest" / "weights.safetensors").exists()


def test_resumed_training_continues_with_the_same_losses(tmp_path, one_thread):
    requests = synthetic_requests(16, seed=3)

    def run(out, steps):
        model, tokenizer = load_model("tiny-gpt2", seed=0)
        editor = SERAC(model, tokenizer, train_encoder=False, progress=False)
        editor.fit(requests, [], TrainConfig(edit_batch_size=2, episodes_per_step=1, max_steps=steps, progress=False,
                                             lr={"counterfactual": 1e-3}, out_dir=str(out)))
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in log if r["kind"] == "train"]

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "interrupted", 2)
    resumed = run(tmp_path / "interrupted", 4)  # continues from interrupted/latest
    assert [step for step, _ in resumed] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], rel=1e-6)


def test_sss_eval_reads_serac_from_the_checkpoint(tiny_gpt2, tmp_path, capsys, one_thread):
    """``sss eval --checkpoint DIR`` without ``--editor`` loads SERAC (the checkpoint names it)."""
    from sss import cli

    model, tokenizer = tiny_gpt2
    SERAC(model, tokenizer, progress=False, threshold=0.4).save(tmp_path / "serac")
    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "serac"), "--model", "tiny-gpt2", "--data", "demo",
                     "--limit", "1", "--no-generate", "--out", str(out), "--no-progress"]) == 0
    assert "| Metric | Unedited | SERAC |" in capsys.readouterr().out
    reports = sorted(out.glob("results_serac_*.json"))  # results_<label>_<hash of the run>.json
    assert len(reports) == 1, [p.name for p in out.iterdir()]
    report = json.loads(reports[0].read_text())
    assert report["editor"]["editor"] == "serac" and report["editor"]["config"]["threshold"] == 0.4
