"""The downstream recipe (sss.losses.recipe): SSS in a plain PyTorch loop and in a transformers.Trainer."""
from __future__ import annotations

import copy

import pytest
import torch

from sss import FTL, EditRequest, SSSRegularizer, load_model
from sss.data import encode_pairs
from sss.losses import sss_loss, sss_penalty, sss_terms

PROMPTS = ["The capital of France is", "The Eiffel Tower stands in"]
TARGETS = ["Rome", "the city of Rome"]
TRAINED = "transformer.h.0.mlp.c_proj.weight"  # tiny-gpt2's first MLP output


def nll(model, tokenizer):
    """The plain loss a user's loop would have: the pairs' mean target NLL (no SSS)."""
    return sss_terms(model, encode_pairs(tokenizer, PROMPTS, TARGETS)).nll.mean()


def sgd_steps(model, tokenizer, C, steps=3, lr=0.5):
    """A user's own loop: SGD on one MLP weight with loss = (1 - C) * nll + C * penalty."""
    weight = model.get_parameter(TRAINED)
    optimizer = torch.optim.SGD([weight], lr=lr)
    regularizer = SSSRegularizer(C=C)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nll(model, tokenizer)
        penalty = sss_penalty(model, tokenizer, PROMPTS, TARGETS, regularizer=regularizer)
        regularizer.combine(loss, penalty).backward()
        optimizer.step()
    return weight.detach().clone()


def test_plain_loop_with_the_penalty_moves_the_weights_differently(tiny_gpt2, one_thread):
    model, tokenizer = tiny_gpt2
    start = model.get_parameter(TRAINED).detach().clone()
    plain = sgd_steps(copy.deepcopy(model), tokenizer, C=0.0)
    regularized = sgd_steps(copy.deepcopy(model), tokenizer, C=0.5)
    assert not torch.equal(plain, start) and not torch.equal(regularized, start)
    # C = 0.5 halves the NLL's share, so compare with the pure-NLL update at half the rate too:
    # what is left over is the penalty's own gradient.
    half = sgd_steps(copy.deepcopy(model), tokenizer, C=0.0, lr=0.25)
    assert not torch.allclose(regularized, half, rtol=0, atol=1e-7)


def reference_terms(model, tokenizer):
    """J per pair and SSS (last_hidden, prompt tokens, mean), one pair at a time with no padding,
    written from Eq. 9 rather than from sss.losses: returns (J [pairs], penalty), graphs kept."""
    nlls, per_pair = [], []
    for prompt, target in zip(PROMPTS, TARGETS):
        prompt_ids, target_ids = tokenizer(prompt)["input_ids"], tokenizer(" " + target)["input_ids"]
        p, t = len(prompt_ids), len(target_ids)
        hidden = model.transformer(input_ids=torch.tensor([prompt_ids + target_ids])).last_hidden_state
        log_probs = torch.log_softmax(model.lm_head(hidden)[0], dim=-1)
        J = -log_probs[p - 1 + torch.arange(t), torch.tensor(target_ids)].mean()
        (grad,) = torch.autograd.grad(J, hidden, create_graph=True)
        nlls.append(J)
        per_pair.append(grad[0, :p].pow(2).sum(-1).mean())
    return torch.stack(nlls), torch.stack(per_pair).mean()


def test_the_penalty_and_its_weight_gradient_equal_eq9_written_independently(tiny_gpt2, one_thread):
    model, tokenizer = tiny_gpt2
    weight = model.get_parameter(TRAINED)
    penalty = sss_penalty(model, tokenizer, PROMPTS, TARGETS)
    _, expected = reference_terms(model, tokenizer)
    assert penalty.dim() == 0 and expected.item() > 0
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    (got,) = torch.autograd.grad(penalty, weight)
    (want,) = torch.autograd.grad(expected, weight)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_the_penalty_gradient_matches_finite_differences(tiny_gpt2, one_thread):
    # create_graph must make d(penalty)/d(weight) the true derivative, not a detached zero.
    model, tokenizer = tiny_gpt2
    model = model.double()
    weight = model.get_parameter(TRAINED)
    direction = torch.randn_like(weight)
    penalty = sss_penalty(model, tokenizer, PROMPTS, TARGETS)
    (grad,) = torch.autograd.grad(penalty, weight)
    analytic = (grad * direction).sum().item()
    eps = 1e-5
    with torch.no_grad():
        weight.add_(eps * direction)
    up = sss_penalty(model, tokenizer, PROMPTS, TARGETS).item()
    with torch.no_grad():
        weight.sub_(2 * eps * direction)
    down = sss_penalty(model, tokenizer, PROMPTS, TARGETS).item()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-4)


class Recording(SSSRegularizer):
    """An SSSRegularizer that keeps every penalty it computes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def penalty(self, loss, embeddings, token_mask, *, create_graph=True):
        value = super().penalty(loss, embeddings, token_mask, create_graph=create_graph)
        self.seen.append(value.detach().clone())
        return value


@pytest.mark.parametrize("options", [{}, {"target": "input_embeds", "tokens": "all", "reduction": "sum"}])
def test_the_penalty_equals_the_one_ftl_computes_for_the_same_batch(tiny_gpt2, options, one_thread):
    model, tokenizer = tiny_gpt2
    regularizer = Recording(C=0.9, **options)
    # FT-L's first step sees the unedited weights, as the recipe does below.
    FTL(model, tokenizer, regularizer=regularizer, steps=1, progress=False).edit(
        [EditRequest(p, t) for p, t in zip(PROMPTS, TARGETS)]).restore()
    inside_ftl = regularizer.seen[0]
    ours = sss_penalty(model, tokenizer, PROMPTS, TARGETS, **options)
    assert torch.allclose(ours.detach(), inside_ftl, rtol=1e-6, atol=0), (ours.item(), inside_ftl.item())


def test_sss_loss_is_eq10_on_the_pairs(tiny_gpt2, one_thread):
    model, tokenizer = tiny_gpt2
    nll, penalty = reference_terms(model, tokenizer)
    expected = 0.1 * nll.mean() + 0.9 * penalty
    got = sss_loss(model, tokenizer, PROMPTS, TARGETS, C=0.9)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    terms = sss_terms(model, encode_pairs(tokenizer, PROMPTS, TARGETS))
    torch.testing.assert_close(terms.nll.detach(), nll.detach(), rtol=1e-5, atol=0)


def test_works_under_no_grad(tiny_gpt2, one_thread):
    model, tokenizer = tiny_gpt2
    expected = sss_penalty(model, tokenizer, PROMPTS, TARGETS).item()
    with torch.no_grad():  # e.g. an evaluation loop: the penalty is a gradient, grad is turned on inside
        assert sss_penalty(model, tokenizer, PROMPTS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda m, t: sss_penalty(m, t, "a prompt", "a target"), "lists of strings"),
    (lambda m, t: sss_penalty(m, t, PROMPTS, TARGETS, regularizer=SSSRegularizer(), C=0.5), "not both"),
    (lambda m, t: sss_penalty(m, t, PROMPTS, TARGETS, regularizer="sss"), "SparsityRegularizer"),
    (lambda m, t: sss_penalty(m, t, PROMPTS, TARGETS[:1]), "2 prompts but 1 targets"),
    (lambda m, t: sss_penalty(m, t, PROMPTS, TARGETS, target="nowhere"), "unknown target"),
])
def test_bad_input_is_refused_by_name(tiny_gpt2, call, message):
    with pytest.raises(ValueError, match=message):
        call(*tiny_gpt2)


# --- inside a transformers.Trainer -----------------------------------------------------------

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, prompts, targets):
        self.rows = [{"prompt": p, "target": t} for p, t in zip(prompts, targets)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(rows):
    return {"prompts": [r["prompt"] for r in rows], "targets": [r["target"] for r in rows]}


class SSSTrainer(transformers.Trainer):
    """The README's snippet: the pairs' own NLL, regularized by SSS (Eq. 10)."""

    def __init__(self, *args, sss_tokenizer, regularizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.sss_tokenizer, self.regularizer = sss_tokenizer, regularizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = sss_loss(model, self.sss_tokenizer, inputs["prompts"], inputs["targets"], regularizer=self.regularizer)
        return (loss, None) if return_outputs else loss


def train_with_trainer(C, tmp_path):
    # tiny-llama has no dropout, so the training-mode loss Trainer logs can be recomputed exactly.
    model, tokenizer = load_model("tiny-llama", seed=0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"C{C}"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = SSSTrainer(model=model, args=args, train_dataset=PairDataset(PROMPTS, TARGETS), data_collator=collate,
                         sss_tokenizer=tokenizer, regularizer=SSSRegularizer(C=C))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model, tokenizer, start, losses


def test_trainer_compute_loss_trains_and_logs_the_penalty(tmp_path, one_thread):
    model, tokenizer, start, losses = train_with_trainer(0.9, tmp_path)
    assert len(losses) == 2
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())  # it trained

    # The first logged loss is Eq. 10 on the untrained model; C = 0 logs the bare NLL instead.
    fresh, _ = load_model("tiny-llama", seed=0)
    terms = sss_terms(fresh, encode_pairs(tokenizer, PROMPTS, TARGETS))
    nll_value, penalty_value = terms.nll.mean().item(), terms.penalty.item()
    assert penalty_value > 0
    assert losses[0] == pytest.approx(0.1 * nll_value + 0.9 * penalty_value, rel=1e-3)
    _, _, _, plain = train_with_trainer(0.0, tmp_path)
    assert plain[0] == pytest.approx(nll_value, rel=1e-3)
    assert abs(losses[0] - plain[0]) > 1e-3
