"""Key statistics: E[k kᵀ] of an MLP output projection's inputs, checked against keys computed
another way, cached, refused for other weights, and resumed bit for bit after an interrupt."""
from __future__ import annotations

import json

import pytest
import torch

from sss import load_model
from sss.stats import key_second_moment, moment

pytestmark = pytest.mark.usefixtures("one_thread")

PARAGRAPHS = ["The Eiffel Tower is in Paris, the capital of France.",
              "Danielle Darrieux was a French actress; her mother tongue was French.",
              "Water boils at one hundred degrees at sea level, and freezes at zero.",
              "The Danube flows through Vienna, Budapest and Belgrade into the Black Sea.",
              "Chess is played on a board of sixty-four squares by two players."]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(PARAGRAPHS))
    return path


def reference_keys(model, tokenizer, block, max_length=8):
    """The MLP's hidden activations recomputed from the MLP's own input (not the projection's),
    for every token of every window, in order."""
    mlp = model.get_submodule(("transformer.h" if model.config.model_type == "gpt2" else "model.layers") + f".{block}.mlp")
    keys = []

    def recompute(module, args):
        x = args[0]
        if model.config.model_type == "gpt2":
            keys.append(module.act(module.c_fc(x)))
        else:
            keys.append(module.act_fn(module.gate_proj(x)) * module.up_proj(x))

    hook = mlp.register_forward_pre_hook(recompute)
    try:
        for text in PARAGRAPHS:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids), max_length):
                with torch.no_grad():
                    model(input_ids=torch.tensor([ids[start:start + max_length]]))
    finally:
        hook.remove()
    return torch.cat([k[0] for k in keys]).double()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_the_moment_equals_keys_computed_another_way(name, corpus, tmp_path):
    model, tokenizer = load_model(name, seed=0)
    keys = reference_keys(model, tokenizer, 1)
    for tokens in (len(keys), len(keys) - 7):  # all of them, and the first tokens - 7 in reading order
        expected = keys[:tokens].T @ keys[:tokens] / tokens
        got = key_second_moment(model, tokenizer, 1, corpus=str(corpus), tokens=tokens, max_length=8, batch_size=3,
                                folder=tmp_path / f"{name}-{tokens}", progress=False)
        assert got.dtype == torch.float64 and got.shape == (keys.shape[1],) * 2
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)  # float32 keys, summed in another order


def test_a_second_call_reads_the_cache_and_runs_nothing(corpus, tmp_path, monkeypatch):
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    first = key_second_moment(model, tokenizer, 0, corpus=str(corpus), tokens=40, max_length=8, folder=tmp_path / "s",
                              progress=False)
    monkeypatch.setattr(moment, "_keys", lambda *a, **k: pytest.fail("the model ran again"))
    assert torch.equal(key_second_moment(model, tokenizer, 0, corpus=str(corpus), tokens=40, max_length=8,
                                         folder=tmp_path / "s", progress=False), first)


def test_a_cache_for_other_weights_is_refused_but_editing_the_projection_keeps_it(corpus, tmp_path):
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    options = dict(corpus=str(corpus), tokens=40, max_length=8, folder=tmp_path / "s", progress=False)
    first = key_second_moment(model, tokenizer, 1, **options)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.add_(1.0)  # what ROME and MEMIT change: the keys do not
    assert torch.equal(key_second_moment(model, tokenizer, 1, **options), first)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3  # below the projection: other keys
    with pytest.raises(ValueError, match=r"computed for other weights \(fingerprint \w+; this model's keys depend "
                                         r"on weights with fingerprint \w+\)"):
        key_second_moment(model, tokenizer, 1, **options)


def test_an_interrupted_run_resumes_to_the_same_matrix_bit_for_bit(corpus, tmp_path, monkeypatch):
    model, tokenizer = load_model("tiny-llama", seed=0)
    options = dict(corpus=str(corpus), tokens=60, max_length=8, batch_size=2, progress=False)
    whole = key_second_moment(model, tokenizer, 1, folder=tmp_path / "whole", **options)
    keys, calls = moment._keys, []

    def interrupted(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return keys(*args)

    monkeypatch.setattr(moment, "_keys", interrupted)
    with pytest.raises(KeyboardInterrupt):
        key_second_moment(model, tokenizer, 1, folder=tmp_path / "parts", checkpoint_every=0, **options)
    state = json.loads((tmp_path / "parts" / "partial" / "state.json").read_text())
    assert state["chunks"] == 3 and 0 < state["count"] < 60 and not (tmp_path / "parts" / "manifest.json").exists()
    monkeypatch.setattr(moment, "_keys", keys)
    resumed = key_second_moment(model, tokenizer, 1, folder=tmp_path / "parts", **options)
    assert torch.equal(resumed, whole) and not (tmp_path / "parts" / "partial").exists()


def test_samples_of_the_model_are_the_default_corpus_and_are_seeded(tmp_path):
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    options = dict(tokens=48, max_length=12, batch_size=2, progress=False)
    first = key_second_moment(model, tokenizer, 0, folder=tmp_path / "a", **options)
    again = key_second_moment(model, tokenizer, 0, folder=tmp_path / "b", **options)
    other = key_second_moment(model, tokenizer, 0, folder=tmp_path / "c", seed=1, **options)
    assert torch.equal(first, again) and not torch.equal(first, other)
    eigenvalues = torch.linalg.eigvalsh(first)
    assert eigenvalues.min() > -1e-9  # a second moment: positive semi-definite


@pytest.mark.parametrize("case, message", [
    ("block", "block 5 is out of range: the model has 2 blocks"),
    ("empty", "holds no text"),
    ("short", "holds 1 tokens; ask for at most that many"),
    ("missing", "no such file or folder"),
    ("binary", "is not UTF-8 text"),
])
def test_bad_input_is_a_clear_error(case, message, tmp_path):
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    path = tmp_path / "corpus.txt"
    path.write_text({"empty": "\n\n  \n", "short": "Paris"}.get(case, "Some text here."))
    if case == "binary":
        path.write_bytes(b"\xff\xfe\x00\x80")
    corpus = str(tmp_path / "nothing.txt") if case == "missing" else str(path)
    with pytest.raises(ValueError, match=message):
        key_second_moment(model, tokenizer, 5 if case == "block" else 0, corpus=corpus, tokens=10,
                          folder=tmp_path / "s", progress=False)


def test_the_command_line_computes_then_reuses_the_statistics(corpus, tmp_path, monkeypatch, capsys):
    from sss import cli

    monkeypatch.setenv("SSS_CACHE", str(tmp_path / "cache"))
    argv = ["stats", "--model", "tiny-gpt2", "--layers", "0", "-1", "--corpus", str(corpus), "--tokens", "30",
            "--max-length", "8", "--no-progress"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["block 0", "block -1"]
    assert all("(256, 256) over 30 tokens" in line for line in lines)
    folders = sorted((tmp_path / "cache" / "stats").glob("*/*"))
    assert sorted(f.name.split("-")[0] for f in folders) == ["block0", "block1"]
    monkeypatch.setattr(moment, "_keys", lambda *a, **k: pytest.fail("the cache was not reused"))
    assert cli.main(argv) == 0
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv[:4] + ["7"] + argv[6:])
    assert exit_.value.code == 2 and "--layers 7: the model has 2 blocks" in capsys.readouterr().err
