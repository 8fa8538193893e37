"""MEND: the identity edit, gradients through the edit (with SSS), restore/stack, checkpoints, training."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sss import MEND, EditRequest, SSSRegularizer, load_model
from sss.data import encode_pairs
from sss.editors import editor_class
from sss.editors.mend import MENDConfig
from sss.eval.metrics import teacher_forced, token_acc
from sss.losses import target_nll
from sss.train import Episode, TrainConfig, checkpoint_editor, write_checkpoint
from synthetic_edits import train_and_heldout

REQUESTS = [EditRequest("The capital of France is", "Rome", rephrase_prompts=("France's capital city is",)),
            EditRequest("Water boils at a temperature of", "fifty degrees")]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread per test


def weights(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def randomise_networks(editor, scale=0.1, seed=1):
    """Move the networks away from the identity so every parameter has a say in the edit."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in editor.networks.named_parameters():
            if name != "edit_lrs":
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def reliability(model, tokenizer, editor, requests):
    """Mean post-edit token accuracy of each request, edited alone and restored."""
    scores = []
    for request in requests:
        with editor.edit(request):
            (result,) = teacher_forced(model, tokenizer, [(request.prompt, request.target_new)])
        scores.append(token_acc(result))
    return sum(scores) / len(scores)


def test_defaults_follow_mend_gpt2_xl():
    config = MENDConfig()
    assert (config.rank, config.n_hidden, config.init_edit_lr, config.lr, config.lr_lr, config.c_e) == \
        (1920, 1, 1e-4, 1e-6, 1e-4, 0.1)
    assert editor_class("mend") is MEND
    with pytest.raises(ValueError, match="weights"):
        MENDConfig(weights=("attention",))


@pytest.mark.slow
def test_edited_weights_are_the_last_three_mlp_blocks(smollm2):
    model, tokenizer = smollm2
    editor = MEND(model, tokenizer, rank=8)
    assert editor.weight_names == [f"model.layers.{b}.mlp.{p}.weight" for b in (27, 28, 29)
                                   for p in ("gate_proj", "up_proj", "down_proj")]
    # gate and up share one transform (same shape), down has its own; rank capped at d_in + d_out.
    assert sorted(editor.networks.transforms) == ["1536x576", "576x1536"]
    assert MEND(model, tokenizer).networks.transforms["576x1536"].rank == 1920


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_identity_edit_is_one_gradient_step(name):
    model, tokenizer = load_model(name)
    step = 0.5
    editor = MEND(model, tokenizer, normalize=False, init_edit_lr=step, progress=False)
    before = weights(model, editor.weight_names)
    batch = encode_pairs(tokenizer, [r.prompt for r in REQUESTS], [r.target_new for r in REQUESTS])
    params = dict(model.named_parameters())
    loss = target_nll(model(**batch.model_inputs).logits, batch).mean()
    grads = torch.autograd.grad(loss, [params[n] for n in editor.weight_names])

    handle = editor.edit(REQUESTS)
    for name_, grad in zip(editor.weight_names, grads):
        assert grad.abs().max() > 1e-3  # the step is not vacuous
        torch.testing.assert_close(params[name_].detach(), before[name_] - step * grad, atol=1e-6, rtol=0)
    handle.restore()
    assert all(torch.equal(params[n], before[n]) for n in before)


def test_outer_loss_gradient_matches_finite_differences_with_sss():
    model, tokenizer = load_model("tiny-gpt2")
    model.double()
    regularizer = SSSRegularizer(C=0.5)
    editor = MEND(model, tokenizer, rank=4, init_edit_lr=1e-2, regularizer=regularizer, progress=False)
    assert editor.networks.edit_lrs.dtype == torch.float64
    editor.init_statistics(REQUESTS + [EditRequest("Paris is a city in", "Spain")])
    randomise_networks(editor)
    for p in model.parameters():
        p.requires_grad_(False)
    episode = Episode(tuple(REQUESTS), tuple(editor_locality()))
    params = [p for p in editor.networks.parameters()]

    def losses():
        out = editor.episode_losses(episode, create_graph=True)
        return out["loss"], out["penalty"]

    loss, penalty = losses()
    # Eq. 10 on Eq. 6: the pieces combine as documented.
    out = editor.episode_losses(episode, create_graph=True)
    torch.testing.assert_close(out["loss_ori"], 0.1 * out["edit_loss"] + 1.0 * out["loc_loss"])
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_ori"] + 0.5 * out["penalty"])
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    penalty_grads = torch.autograd.grad(penalty, params, allow_unused=True)

    generator = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    eps = 1e-6

    def shifted(sign):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        try:
            value = losses()
        finally:
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(sign * eps * d)
        return [v.detach() for v in value]

    (loss_plus, pen_plus), (loss_minus, pen_minus) = shifted(1.0), shifted(-1.0)
    numeric = (loss_plus - loss_minus) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)
    # The second-order SSS term on its own: its gradient reaches the networks and is right.
    numeric_pen = (pen_plus - pen_minus) / (2 * eps)
    analytic_pen = sum((g * d).sum() for g, d in zip(penalty_grads, direction) if g is not None)
    assert abs(float(analytic_pen)) > 1e-8
    torch.testing.assert_close(analytic_pen, numeric_pen, rtol=1e-5, atol=1e-9)


def editor_locality():
    from sss import LocalityProbe

    return [LocalityProbe("The sky on a clear day is", "blue"), LocalityProbe("Two plus two equals", "four")]


def test_edits_stack_and_restore_bit_for_bit(tiny_llama):
    model, tokenizer = tiny_llama
    editor = MEND(model, tokenizer, rank=8, init_edit_lr=1e-2, progress=False)
    editor.init_statistics(REQUESTS)
    randomise_networks(editor)
    original = weights(model, editor.weight_names)
    first = editor.edit(REQUESTS[0])
    after_first = weights(model, editor.weight_names)
    assert not all(torch.equal(after_first[n], original[n]) for n in original)
    second = editor.edit(REQUESTS[1])
    after_second = weights(model, editor.weight_names)
    # The second edit was computed at the edited weights: it differs from editing the original model.
    with pytest.raises(RuntimeError, match="newest first"):
        first.restore()
    second.restore()
    assert all(torch.equal(weights(model, [n])[n], after_first[n]) for n in original)
    first.restore()
    assert all(torch.equal(weights(model, [n])[n], original[n]) for n in original)
    with editor.edit(REQUESTS[1]):
        alone = weights(model, editor.weight_names)
    assert not all(torch.equal(alone[n] - original[n], after_second[n] - after_first[n]) for n in original)
    assert all(torch.equal(weights(model, [n])[n], original[n]) for n in original)


@pytest.mark.parametrize("layers, message", [
    ("10", "MENDConfig.layers must be a block index or a list of block indices (integers), got '10'"),
    ([1.5], "MENDConfig.layers must be a block index or a list of block indices"),
    ([], "MENDConfig.layers must name at least one block"),
    ((True,), "MENDConfig.layers must be a block index or a list of block indices"),
])
def test_mend_layers_are_checked_by_type_not_coerced(layers, message):
    # int("10") once turned layers="10" into blocks 1 and 0.
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MENDConfig(layers=layers)
    assert MENDConfig(layers=-1).layers == (-1,) and MENDConfig(layers=[0, 2]).layers == (0, 2)


def test_untrained_normalised_editor_says_what_to_do(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    with pytest.raises(ValueError, match="init_statistics"):
        MEND(model, tokenizer, rank=4, progress=False).edit(REQUESTS[0])


def test_save_and_load_reproduce_the_edit_and_refuse_other_models(tiny_gpt2, tiny_llama, tmp_path):
    model, tokenizer = tiny_gpt2
    editor = MEND(model, tokenizer, rank=8, init_edit_lr=1e-3, regularizer=SSSRegularizer(C=0.7),
                  model_name="tiny-gpt2", progress=False)
    editor.init_statistics(REQUESTS)
    randomise_networks(editor)
    editor.save(tmp_path / "mend")
    saved = json.loads((tmp_path / "mend" / "config.json").read_text())
    # One checkpoint shape for every editor: the editor's config under "trainable", as training writes it.
    assert set(saved) == {"trainable"} and saved["trainable"]["editor"] == "mend"
    assert saved["trainable"]["model"]["name"] == "tiny-gpt2" and saved["trainable"]["config"]["rank"] == 8
    assert {"config.json", "weights.safetensors"} <= {p.name for p in (tmp_path / "mend").iterdir()}

    with editor.edit(REQUESTS) as handle:
        expected = handle.delta
    # sss 0.1.0's MEND.save wrote the editor's config at the top of config.json: still read.
    legacy = tmp_path / "mend-0.1.0"
    write_checkpoint(legacy, editor.state_dict(), saved["trainable"])
    for folder in (tmp_path / "mend", legacy):
        loaded = MEND.load(folder, model, tokenizer, progress=False)
        assert loaded.regularizer.C == 0.7 and checkpoint_editor(folder) == "mend"
        with loaded.edit(REQUESTS) as handle:
            got = handle.delta
        assert all(torch.equal(expected[n], got[n]) for n in expected)

    with pytest.raises(ValueError, match="architecture: checkpoint 'gpt2', model 'llama'"):
        MEND.load(tmp_path / "mend", *tiny_llama)
    wider = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4))
    with pytest.raises(ValueError, match=r"transformer.h.0.mlp.c_fc.weight: checkpoint shape \(64, 256\), "
                                         r"model \(32, 128\)"):
        MEND.load(tmp_path / "mend", wider, tokenizer)


def test_training_lifts_heldout_reliability_on_tiny_gpt2(tmp_path):
    model, tokenizer = load_model("tiny-gpt2")
    train, heldout = train_and_heldout()
    # A step size far too small to edit: what the untrained editor achieves is the baseline.
    editor = MEND(model, tokenizer, rank=16, init_edit_lr=1e-6, lr=1e-3, lr_lr=1e-5, progress=False)
    editor.init_statistics(train[:20])
    unedited = sum(token_acc(r) for r in teacher_forced(model, tokenizer, [(q.prompt, q.target_new) for q in heldout]))
    assert unedited / len(heldout) <= 0.1
    untrained = reliability(model, tokenizer, editor, heldout)
    assert untrained <= 0.2

    before = weights(model, [n for n, _ in model.named_parameters()])
    result = editor.fit(train, heldout[:4], TrainConfig(edit_batch_size=1, episodes_per_step=2, max_steps=12,
                                                        val_every=6, val_episodes=4, patience=None,
                                                        out_dir=str(tmp_path), progress=False))
    assert result.steps == 12
    trained = reliability(model, tokenizer, editor, heldout)
    assert trained >= 0.9, (untrained, trained)
    # Training never changes the base model, and leaves its requires_grad flags as they were.
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) and after[n].requires_grad for n in before)
    # The best checkpoint loads back into an editor that edits the same way.
    reloaded = MEND.load(tmp_path, model, tokenizer, progress=False)
    assert reliability(model, tokenizer, reloaded, heldout) == trained


def test_sss_eval_reads_the_editor_from_the_checkpoint(tiny_gpt2, tmp_path, capsys):
    """``sss eval --checkpoint DIR`` without ``--editor``: the checkpoint's config names MEND."""
    from sss import cli

    model, tokenizer = tiny_gpt2
    editor = MEND(model, tokenizer, rank=8, model_name="tiny-gpt2", progress=False)
    editor.init_statistics(REQUESTS)
    editor.save(tmp_path / "mend")
    from sss import FTL, Editor

    loaded = Editor.from_checkpoint(tmp_path / "mend", model, tokenizer, progress=False)
    assert type(loaded) is MEND and loaded.config.rank == 8
    with pytest.raises(ValueError, match="'ft-l' .* has no checkpoints"):
        FTL.from_checkpoint(tmp_path / "mend", model, tokenizer)
    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "mend"), "--model", "tiny-gpt2", "--data", "demo",
                     "--limit", "1", "--no-generate", "--out", str(out), "--no-progress"]) == 0
    assert "| Metric | Unedited | MEND |" in capsys.readouterr().out
    (path,) = out.glob("results_mend*.json")  # the file name carries a hash of the run's identity
    report = json.loads(path.read_text())
    assert report["editor"]["editor"] == "mend" and report["editor"]["config"]["rank"] == 8
    with pytest.raises(SystemExit):
        cli.main(["eval", "--editor", "mend", "--model", "tiny-gpt2", "--data", "demo", "--out", str(out)])
    assert "--editor mend needs --checkpoint DIR" in capsys.readouterr().err
