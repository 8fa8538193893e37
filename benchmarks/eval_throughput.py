"""Evaluation speed: ``sss.evaluate``'s measuring path against a one-probe-at-a-time reference.

Both sides measure the same CounterFact requests (rewrite, rephrase and locality probes; the
locality probes include the derived Distract-Neighbor) on SmolLM2-135M with every metric:
teacher-forced token accuracy, the probability margin over the rival answer, greedy exact match
and locality agreement, on the unedited model and after an "edit". The edit is a no-op
(``NullEditor``) so only measuring is timed, not FT-L; ``single`` mode, so the edited side is
measured request by request as a real run does (one model state per edit).

The reference, written out below, is the straightforward loop: per probe one forward pass for
the answer, one for the rival, one ``generate`` for exact match, nothing shared. ``evaluate``
observes the unedited model for all requests in one length-bucketed pass, reads greedy
continuations off the teacher-forced pass where that is exact (sss.eval.greedy), and tokenizes
each string once. The two sides are interleaved (alternating which goes first), the reference's
metric values are checked against evaluate's records, and the medians are reported::

    OMP_NUM_THREADS=1 python benchmarks/eval_throughput.py             # smollm2-135m, 10 requests, 5 rounds
    python benchmarks/eval_throughput.py --model tiny-gpt2 --repeats 3

The last line is ``RESULT eval_throughput ratio=<evaluate time / reference time>``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sss.data import load_data
from sss.data.tokenize import continuation
from sss.editors.core import EditHandle, Editor
from sss.eval import evaluate, probes_of
from sss.eval.metrics import exact_match
from sss.models import load_model

COUNTERFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-val.json"


class _NoOpHandle(EditHandle):
    def _undo(self) -> None:
        pass


class NullEditor(Editor):
    """Changes nothing: isolates the cost of measuring from the cost of editing."""

    name = "null"

    def _apply(self, requests):
        return _NoOpHandle(self.base_model, requests, self.name)


@torch.no_grad()
def reference_pass(model, tokenizer, prompt: str, answer: str):
    """One probe, one forward: argmax at each target position and the mean log-prob of the target."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(continuation(answer), add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([prompt_ids + target_ids])).logits[0]
    scores = logits[len(prompt_ids) - 1:-1]  # the positions that predict the target tokens
    labels = torch.tensor(target_ids)
    log_probs = scores.log_softmax(-1).gather(-1, labels[:, None])[:, 0]
    return scores.argmax(-1).tolist(), labels.tolist(), float(log_probs.mean())


@torch.no_grad()
def reference_generation(model, tokenizer, prompt: str, n_tokens: int) -> str:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                            do_sample=False)
    return tokenizer.decode(output[0, ids.shape[1]:ids.shape[1] + n_tokens].tolist(), skip_special_tokens=True)


def reference_measure(model, tokenizer, request, unedited=None, generate=True):
    """Every probe of one request on its own; returns its metric values and its argmax predictions."""
    values, predictions = [], []
    for p, probe in enumerate(probes_of(request)):
        predicted, labels, mean_log_prob = reference_pass(model, tokenizer, probe.prompt, probe.answer)
        probe_values = {"token_acc": sum(a == b for a, b in zip(predicted, labels)) / len(labels)}
        if generate:
            text = reference_generation(model, tokenizer, probe.prompt, len(labels))
            probe_values["exact_match"] = exact_match(text, probe.answer)
        if probe.rival is not None:
            probe_values["prob_margin"] = float(mean_log_prob > reference_pass(model, tokenizer, probe.prompt,
                                                                               probe.rival)[2])
        if unedited is not None and probe.family == "locality":
            probe_values["agreement"] = sum(a == b for a, b in zip(predicted, unedited[p])) / len(labels)
        values.append(probe_values)
        predictions.append(predicted)
    return values, predictions


def reference_evaluate(model, tokenizer, requests, generate):
    """Unedited pass, then the (no-op) edit and the edited pass, probe by probe."""
    unedited = [reference_measure(model, tokenizer, r, generate=generate) for r in requests]
    post = [reference_measure(model, tokenizer, r, pre[1], generate)[0] for r, pre in zip(requests, unedited)]
    return [{"pre": pre[0], "post": after} for pre, after in zip(unedited, post)]


def disagreements(results, reference) -> int:
    """Probe values where evaluate's records and the reference differ (expected: none)."""
    count = 0
    for record, ref in zip(results.records, reference):
        for probe, pre, post in zip(record["probes"], ref["pre"], ref["post"]):
            count += (probe["pre"] != pre) + (probe["post"] != post)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=f"{COUNTERFACT}:counterfact", help="PATH[:format] or 'demo'")
    parser.add_argument("--limit", type=int, default=10, help="requests (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (default: %(default)s)")
    parser.add_argument("--no-generate", dest="generate", action="store_false", help="skip exact_match")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    requests = load_data(args.data, limit=args.limit)
    probes = 2 * sum(len(probes_of(r)) for r in requests)  # each probe measured unedited and edited
    editor = NullEditor(model, tokenizer, progress=False)

    def optimised():
        return evaluate(editor, requests, "single", generate=args.generate, progress=False)

    def reference():
        return reference_evaluate(model, tokenizer, requests, args.generate)

    # Warm-up on one request (first calls pay for allocations and lazy initialisation).
    evaluate(editor, requests[:1], "single", generate=args.generate, progress=False)
    reference_evaluate(model, tokenizer, requests[:1], args.generate)
    times = {"evaluate": [], "reference": []}
    differing = None
    for round_ in range(args.repeats):
        order = [("evaluate", optimised), ("reference", reference)]
        outputs = {}
        for name, run in order if round_ % 2 == 0 else reversed(order):
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
        if differing is None:  # both sides must compute the same numbers
            differing = disagreements(outputs["evaluate"], outputs["reference"])

    print(f"model {args.model}, {len(requests)} requests, {probes} probe measurements per run "
          f"(generate={args.generate}), threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")
    print(f"  probe values where evaluate and the reference differ: {differing}")
    medians = {}
    for name, seconds in times.items():
        medians[name] = statistics.median(seconds)
        print(f"  {name:9s} median {medians[name]:7.2f} s  ->  {probes / medians[name]:7.1f} probes/s   (runs: "
              + ", ".join(f"{s:.2f}" for s in seconds) + ")")
    print(f"RESULT eval_throughput ratio={medians['evaluate'] / medians['reference']:.3f}")


if __name__ == "__main__":
    main()
