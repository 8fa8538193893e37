"""What SERAC learns from one training episode (see ``sss.train.Episode``).

The scope classifier and the counterfactual model share no parameter, so their losses are
simply added and each trains as if alone (the paper: "trained independently"):

* **classifier**: balanced binary cross-entropy over the ``[inputs x edits]`` logit matrix. An
  input is in scope of its own request's edit (the edit prompt and its rephrasings) and out of
  scope of every other edit of the episode; locality inputs are out of scope of all. Each input
  appears bare and with its answer appended, because under teacher forcing the routed model
  classifies the whole sequence, answer included.
* **counterfactual model** (Eq. 4-6): ``L_e`` is the target NLL on ``edit + separator + x`` for
  ``x`` the edit prompt and its rephrasings; ``L_loc`` the KL from the base model on a locality
  input to the counterfactual model reading that input after an (unrelated) edit, over every
  position of the input, so a misrouted input is answered as the base model would.
  ``L_ori = c_e * L_e + c_loc * L_loc``; with a regularizer the loss is Eq. 10,
  ``(1 - C) * L_ori + C * penalty``, the penalty taken on the counterfactual model's forward
  pass of the conditioned edit prompts (the edit example ``x_e`` of the paper).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ...data import PairBatch, encode_for, encode_pairs
from ...data.tokenize import context_length
from ...eval.metrics import argmax_agreement, token_accuracy
from ...losses import locality_kl, target_nll
from ...models import second_order_attention
from .conditioning import edit_text, input_columns, prefix_ids, prepend
from ...losses.head import logits_at, window_logits, window_loss_and_penalty


@dataclass
class ScopeExamples:
    """Classifier inputs of one episode and which edit (column) each one belongs to (-1: none)."""

    texts: List[str]
    owners: List[int]
    bare: List[bool]  # False for the copies with the answer appended

    def labels(self, n_edits: int, device) -> torch.Tensor:
        owners = torch.tensor(self.owners, device=device)
        return (owners.unsqueeze(1) == torch.arange(n_edits, device=device).unsqueeze(0)).float()


def scope_examples(requests, locality) -> ScopeExamples:
    texts, owners, bare = [], [], []

    def add(prompt: str, answer: str, owner: int):
        texts.extend([prompt, prompt + " " + answer.lstrip()])
        owners.extend([owner, owner])
        bare.extend([True, False])

    for j, request in enumerate(requests):
        for prompt in (request.prompt,) + tuple(request.rephrase_prompts):
            add(prompt, request.target_new, j)
    for probe in locality:
        add(probe.prompt, probe.answer, -1)
    return ScopeExamples(texts, owners, bare)


def classifier_loss(classifier, requests, locality) -> Tuple[torch.Tensor, torch.Tensor, ScopeExamples]:
    """``(balanced BCE, logits [N, k], examples)`` for one episode."""
    examples = scope_examples(requests, locality)
    logits = classifier.logits(examples.texts, [edit_text(r) for r in requests])
    labels = examples.labels(len(requests), logits.device)
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    positives, negatives = labels.bool(), ~labels.bool()
    # Negatives outnumber positives k-to-1 and more; weighting both halves equally keeps the
    # classifier from learning "never in scope".
    parts = [per_entry[mask].mean() for mask in (positives, negatives) if mask.any()]
    return torch.stack(parts).mean(), logits, examples


def scope_metrics(logits: torch.Tensor, examples: ScopeExamples, threshold: float) -> Dict[str, float]:
    """Routing accuracy over the bare inputs: in-scope rows must pick their own edit above the
    threshold, out-of-scope rows must stay below it for every edit."""
    probs = torch.sigmoid(logits.float())
    best, index = probs.max(-1)
    owners = torch.tensor(examples.owners, device=logits.device)
    bare = torch.tensor(examples.bare, device=logits.device)
    inside = (owners >= 0) & bare
    outside = (owners < 0) & bare
    routed_right = (best > threshold) & (index == owners)
    rejected = best <= threshold
    metrics = {"scope_in_acc": float(routed_right[inside].float().mean()) if inside.any() else float("nan"),
               "scope_out_acc": float(rejected[outside].float().mean()) if outside.any() else float("nan")}
    correct = torch.where(owners >= 0, routed_right, rejected)[bare]
    metrics["scope_acc"] = float(correct.float().mean())
    return metrics


# ----------------------------------------------------------------------------------------------
# The counterfactual model's batches


@dataclass
class CounterfactualBatches:
    edits: PairBatch  # conditioned edit prompts -> target_new (the edit examples)
    rephrases: Optional[PairBatch]  # conditioned rephrasings -> target_new
    locality: PairBatch  # conditioned locality inputs -> their answers
    locality_plain: PairBatch  # the same locality inputs, unconditioned (for the base model)
    locality_prefix: List[int]  # prefix length of each locality row


def counterfactual_batches(tokenizer, model, requests, locality, separator: str) -> CounterfactualBatches:
    device = next(model.parameters()).device
    limit = context_length(tokenizer, model)
    prefixes = [prefix_ids(tokenizer, edit_text(r), separator) for r in requests]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def conditioned(prompts, targets, owner_prefixes):
        plain = encode_pairs(tokenizer, prompts, targets, max_length=limit, device=device)
        batch = prepend(plain, owner_prefixes, pad)
        if limit is not None and batch.input_ids.shape[1] > limit:
            raise ValueError(f"an edit with its input is {batch.input_ids.shape[1]} tokens, longer than the "
                             f"counterfactual model's context of {limit}")
        return plain, batch

    _, edits = conditioned([r.prompt for r in requests], [r.target_new for r in requests], prefixes)
    rephrase_rows = [(p, r.target_new, prefixes[j]) for j, r in enumerate(requests) for p in r.rephrase_prompts]
    rephrases = conditioned(*map(list, zip(*rephrase_rows)))[1] if rephrase_rows else None
    # Locality probe i reads request i's edit (the loop gives one probe per request).
    loc_prefixes = [prefixes[i % len(prefixes)] for i in range(len(locality))]
    plain, loc = conditioned([p.prompt for p in locality], [p.answer for p in locality], loc_prefixes)
    return CounterfactualBatches(edits, rephrases, loc, plain, [len(p) for p in loc_prefixes])


class Predicted(NamedTuple):
    """Logits of a teacher-forced pass and the batch they line up with (a narrow window of the
    conditioned batch: ``sss.losses.head.target_window``)."""

    logits: torch.Tensor
    batch: PairBatch


def counterfactual_loss(model, base, batches: CounterfactualBatches, *, c_e: float, c_loc: float,
                        regularizer=None) -> Tuple[torch.Tensor, Dict[str, float], Dict[str, object]]:
    """``(loss, logs, logits)`` of the counterfactual model on one episode's batches.

    The LM head runs only where a term reads (sss/losses/head/logits.py): ``logits["edits"]``
    and ``["rephrases"]`` are :class:`Predicted` target windows, ``["locality"]`` the
    counterfactual model's logits at the locality inputs' own positions, aligned with
    ``["base_locality"]`` (the base model on ``batches.locality_plain``).
    """
    logs: Dict[str, float] = {}
    if regularizer is not None:
        with second_order_attention(model):
            window, narrow, edit_nll, penalty = window_loss_and_penalty(regularizer, model, batches.edits)
        edits = Predicted(window, narrow)
        logs["penalty"] = float(penalty.detach())
    else:
        edits = Predicted(*window_logits(model, batches.edits))
        edit_nll, penalty = target_nll(*edits), None
    nlls = [edit_nll]
    rephrases = None
    if batches.rephrases is not None:
        rephrases = Predicted(*window_logits(model, batches.rephrases))
        nlls.append(target_nll(*rephrases))
    edit_loss = torch.cat(nlls).mean()

    if c_loc > 0 or not torch.is_grad_enabled():
        with torch.no_grad():
            base_logits = base(**batches.locality_plain.model_inputs).logits
        conditioned = batches.locality.input_ids
        columns = input_columns(batches.locality_prefix, base_logits.shape[1], conditioned.shape[1], conditioned.device)
        aligned = logits_at(model, batches.locality.model_inputs, columns)
        loc_loss = locality_kl(base_logits, aligned, batches.locality_plain.attention_mask.bool())
    else:  # the term is switched off: skip its two forward passes in training
        base_logits = aligned = None
        loc_loss = edit_loss.new_zeros(())

    loss = c_e * edit_loss + c_loc * loc_loss
    logs.update({"cf_edit_nll": float(edit_loss.detach()), "loc_kl": float(loc_loss.detach()),
                 "cf_loss_ori": float(loss.detach())})
    if penalty is not None:
        loss = regularizer.combine(loss, penalty)
    logits = {"edits": edits, "rephrases": rephrases, "locality": aligned, "base_locality": base_logits}
    return loss, logs, logits


# ----------------------------------------------------------------------------------------------
# Validation: what the routed system gets right


def system_accuracy(editor, episode, logits, examples: ScopeExamples, batches: CounterfactualBatches,
                    cf_logits: Dict[str, object]) -> Dict[str, float]:
    """Validation accuracy of ``editor``'s routed system, routing each bare input among the episode's edits.

    ``reliability``/``generality``: teacher-forced token accuracy on the edit prompts/rephrasings
    (the counterfactual model's when routed to the input's own edit, else the base model's);
    ``locality``: argmax agreement with the base model on the locality answers (1 when not routed).
    """
    probs = torch.sigmoid(logits.float())
    best, index = probs.max(-1)
    bare_rows = [i for i, bare in enumerate(examples.bare) if bare]
    routed_own = [(bool(best[i] > editor.config.threshold) and int(index[i]) == examples.owners[i])
                  for i in bare_rows]
    routed_any = [bool(best[i] > editor.config.threshold) for i in bare_rows]
    requests = episode.requests
    n_rephrases = sum(len(r.rephrase_prompts) for r in requests)
    # Bare rows come in the order scope_examples built them: per request its prompt then its
    # rephrasings, then the locality inputs.
    edit_rows, rephrase_rows, cursor = [], [], 0
    for r in requests:
        edit_rows.append(cursor)
        rephrase_rows.extend(range(cursor + 1, cursor + 1 + len(r.rephrase_prompts)))
        cursor += 1 + len(r.rephrase_prompts)
    loc_rows = list(range(cursor, cursor + len(episode.locality)))

    cf_edit = token_accuracy(*cf_logits["edits"])
    # Unrouted in-scope inputs are answered by the base model; it scores the same target.
    base_batch = _unconditioned_batch(editor, requests, "edits")
    base_edit = token_accuracy(editor.base_model(**base_batch.model_inputs).logits, base_batch)
    reliability = [float(cf_edit[j] if routed_own[row] else base_edit[j]) for j, row in enumerate(edit_rows)]
    metrics = {"reliability": sum(reliability) / len(reliability)}
    if n_rephrases:
        cf_reph = token_accuracy(*cf_logits["rephrases"])
        base_batch = _unconditioned_batch(editor, requests, "rephrases")
        base_reph = token_accuracy(editor.base_model(**base_batch.model_inputs).logits, base_batch)
        generality = [float(cf_reph[j] if routed_own[row] else base_reph[j]) for j, row in enumerate(rephrase_rows)]
        metrics["generality"] = sum(generality) / len(generality)
    agreement = argmax_agreement(cf_logits["base_locality"], cf_logits["locality"],
                                           batches.locality_plain)
    locality = [float(agreement[j]) if routed_any[row] else 1.0 for j, row in enumerate(loc_rows)]
    metrics["locality"] = sum(locality) / len(locality)
    return metrics


def _unconditioned_batch(editor, requests, which: str):
    if which == "edits":
        prompts, targets = [r.prompt for r in requests], [r.target_new for r in requests]
    else:
        rows = [(p, r.target_new) for r in requests for p in r.rephrase_prompts]
        prompts, targets = [p for p, _ in rows], [t for _, t in rows]
    return encode_for(editor.base_model, editor.tokenizer, prompts, targets)
