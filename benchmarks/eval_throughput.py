"""Probes evaluated per second: ``sss.evaluate`` vs a one-probe-at-a-time loop.

Both sides measure the same requests on the same model with the same metrics (teacher-forced
token accuracy, the probability margin where a request has a true target, greedy exact match,
locality agreement), before and after an "edit". The edit is a no-op (``NullEditor``) so only
measurement is timed, not FT-L. ``evaluate`` runs all probes of a request in one teacher-forced
pass and one ``generate`` call; the naive loop runs one pass and one ``generate`` per probe (and
one more pass per rival answer).

The two sides are interleaved (alternating which goes first), repeated, and the medians
reported with their ratio::

    python benchmarks/eval_throughput.py                      # smollm2-135m, 10 demo requests
    python benchmarks/eval_throughput.py --model tiny-gpt2 --repeats 5
    python benchmarks/eval_throughput.py --data ../shared/data/counterfact/counterfact-val.json:counterfact
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sss.data import load_data
from sss.editors.base import EditHandle, Editor
from sss.eval import evaluate, probes_of
from sss.eval.metrics import agreement, exact_match, greedy_continuations, prob_margin, teacher_forced, token_acc
from sss.models import load_model


class _NoOpHandle(EditHandle):
    def _undo(self) -> None:
        pass


class NullEditor(Editor):
    """Changes nothing: isolates the cost of measuring from the cost of editing."""

    name = "null"

    def _apply(self, requests):
        return _NoOpHandle(self.base_model, requests, self.name)


def naive_measure(model, tokenizer, request, reference=None, generate=True):
    """Every probe on its own: one forward for the answer, one per rival, one generate."""
    values, predictions = [], []
    for probe in probes_of(request):
        answer = teacher_forced(model, tokenizer, [(probe.prompt, probe.answer)])[0]
        probe_values = {"token_acc": token_acc(answer)}
        if probe.rival is not None:
            rival = teacher_forced(model, tokenizer, [(probe.prompt, probe.rival)])[0]
            probe_values["prob_margin"] = prob_margin(answer, rival)
        if generate:
            text = greedy_continuations(model, tokenizer, [probe.prompt], [len(answer.labels)])[0]
            probe_values["exact_match"] = exact_match(text, probe.answer)
        if reference is not None and probe.family == "locality":
            probe_values["agreement"] = agreement(answer, reference[len(predictions)])
        predictions.append(answer)
        values.append(probe_values)
    return values, predictions


def naive_evaluate(model, tokenizer, requests, generate):
    """The straightforward loop: unedited pass, then (no-op) edit and edited pass, probe by probe."""
    unedited = [naive_measure(model, tokenizer, r, generate=generate)[1] for r in requests]
    return [naive_measure(model, tokenizer, r, reference, generate)[0] for r, reference in zip(requests, unedited)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="demo", help="'demo' or PATH[:format] (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=10, help="requests (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side (default: %(default)s)")
    parser.add_argument("--no-generate", dest="generate", action="store_false", help="skip exact_match")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    requests = load_data(args.data, limit=args.limit)
    probes = 2 * sum(len(probes_of(r)) for r in requests)  # each probe measured unedited and edited
    editor = NullEditor(model, tokenizer, progress=False)

    def batched():
        evaluate(editor, requests, "single", generate=args.generate, progress=False)

    def naive():
        naive_evaluate(model, tokenizer, requests, args.generate)

    batched(), naive()  # warm-up: first calls pay for allocations and lazy initialisation
    times = {"evaluate": [], "naive": []}
    for round_ in range(args.repeats):
        order = [("evaluate", batched), ("naive", naive)]
        for name, run in order if round_ % 2 == 0 else reversed(order):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    print(f"model {args.model}, {len(requests)} requests, {probes} probe measurements per run "
          f"(generate={args.generate}), threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")
    rates = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rates[name] = probes / median
        print(f"  {name:9s} median {median:7.2f} s  ->  {rates[name]:7.1f} probes/s   (runs: "
              + ", ".join(f"{s:.2f}" for s in seconds) + ")")
    ratios = [n / e for n, e in zip(times["naive"], times["evaluate"])]
    print(f"  speed-up of evaluate over the naive loop: {rates['evaluate'] / rates['naive']:.2f}x "
          f"(median of per-round ratios {statistics.median(ratios):.2f}x)")


if __name__ == "__main__":
    main()
