"""FT-L edit speed: sss's cached step against the straightforward loop, and what SSS costs.

One process, one thread. SmolLM2-135M, block 10, 25 steps (early_stop_loss=-1 so all run),
lr 5e-4, radius 5e-4, ``prompt_last``, each of 10 CounterFact requests edited alone. The
reference below is the loop written out plainly: a full forward over prompt and target at every
step, the full LM head, Adam, the clamp. Both sides edit the same requests with the same
hyper-parameters, interleaved, repeated; each figure is the median of the repeats. The final
weights of the two sides are compared so that a fast wrong result cannot pass.

Then the same requests through ``FTL.edit_each`` (``RESULT ftl_edit_each``): the same
independent edits, all trained together in one padded batch so that the frozen blocks are read
once per step for every request (sss/editors/ftl/grouped.py), against the reference loop one by
one; the weights are compared the same way.

Then the cost of SSS on the optimised path: a step with ``SSSRegularizer(target="last_hidden")``
and with ``target="input_embeds"`` (which must run the full model at every step: the penalty
differentiates through every block) against a plain step, timed as the same edits of
``--sss-steps`` steps each. Prints ``RESULT <name> ratio=<x>`` lines (optimised / reference),
from the medians of the process CPU time (see ``interleave``; wall-time figures are printed too).

    OMP_NUM_THREADS=1 python benchmarks/ftl_speed.py [--repeats 5] [--requests 10] [--sss-requests 4]
        [--only edit|each|sss]
"""
import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from sss import FTL, SSSRegularizer, load_model
from sss.data import encode_pairs, load_data
from sss.losses import edit_loss
from sss.models import mlp_out_path, second_order_attention

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-val.json"
BLOCK, STEPS, LR, RADIUS = 10, 25, 5e-4, 5e-4


def reference_edit(model, tokenizer, request, steps=STEPS, regularizer=None):
    """The straightforward FT-L loop; returns the trained weight and puts the original back."""
    batch = encode_pairs(tokenizer, [request.prompt], [request.target_new])
    weight = model.get_submodule(mlp_out_path(model, BLOCK)).weight
    original = weight.detach().clone()
    optimizer = torch.optim.Adam([weight], lr=LR)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with second_order_attention(model) if regularizer else contextlib.nullcontext():
            if regularizer is None:
                logits, penalty = model(**batch.model_inputs).logits, None
            else:
                logits, _, penalty = regularizer.loss_and_penalty(model, batch)
        loss = edit_loss(logits, batch, "prompt_last").mean()
        (loss if penalty is None else regularizer.combine(loss, penalty)).backward()
        optimizer.step()
        with torch.no_grad():
            weight.copy_(torch.clamp(weight, original - RADIUS, original + RADIUS))
    trained = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(original)
    return trained


def sss_edit(model, tokenizer, request, steps, regularizer=None):
    editor = FTL(model, tokenizer, layers=(BLOCK,), norm_constraint=RADIUS, lr=LR, steps=steps,
                 early_stop_loss=-1.0, regularizer=regularizer, progress=False)
    name = mlp_out_path(model, BLOCK) + ".weight"
    with editor.edit(request):
        return model.get_parameter(name).detach().clone()


def sss_edit_each(model, tokenizer, requests, at_once):
    """The same edits through ``FTL.edit_each``: ``at_once`` of them trained together, each alone in effect."""
    editor = FTL(model, tokenizer, layers=(BLOCK,), norm_constraint=RADIUS, lr=LR, steps=STEPS,
                 early_stop_loss=-1.0, progress=False)
    name = mlp_out_path(model, BLOCK) + ".weight"
    trained = []
    for handle in editor.edit_each(requests, at_once=at_once):
        trained.append(model.get_parameter(name).detach().clone())
        handle.restore()
    return trained


def one_at_a_time(function):
    return lambda requests: [function(request) for request in requests]


def timed(function, requests):
    start, cpu = time.perf_counter(), time.process_time()
    results = function(requests)
    return (time.process_time() - cpu, time.perf_counter() - start), results


def interleave(sides, requests, repeats):
    """Median CPU seconds per side over ``repeats`` rounds, the sides alternating within a round.

    CPU time, not wall time: one thread, so it is the work done, and it does not count the
    time the process waits for a core on a shared machine. Median wall seconds go to ``WALL``.
    """
    times = {name: [] for name in sides}
    results = {}
    for _ in range(repeats):
        for name, function in sides.items():
            seconds, results[name] = timed(function, requests)
            times[name].append(seconds)
    WALL.update({name: statistics.median(wall for _, wall in values) for name, values in times.items()})
    return {name: statistics.median(cpu for cpu, _ in values) for name, values in times.items()}, results


WALL = {}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--sss-steps", type=int, default=5, help="steps per edit when timing the SSS steps")
    parser.add_argument("--sss-requests", type=int, default=4, help="requests edited when timing the SSS steps")
    parser.add_argument("--only", choices=("edit", "each", "sss"),
                        help="time only the one-at-a-time edits, only edit_each, or only the SSS steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model("smollm2-135m")
    trained = model.get_submodule(mlp_out_path(model, BLOCK)).weight
    for p in model.parameters():  # the reference trains one weight (FTL sets, and restores, its own flags)
        p.requires_grad_(p is trained)
    requests = load_data(str(DATA))[:args.requests]
    print(f"smollm2-135m, block {BLOCK}, {STEPS} steps, lr {LR}, radius {RADIUS}, prompt_last, "
          f"{len(requests)} CounterFact requests edited one at a time, {torch.get_num_threads()} thread, "
          f"{args.repeats} interleaved repeats (medians)")

    if args.only in (None, "edit"):
        edit_ratio(model, tokenizer, requests, args.repeats)
    if args.only in (None, "each"):
        edit_each_ratio(model, tokenizer, requests, args.repeats)
    if args.only in (None, "sss"):
        sss_ratios(model, tokenizer, requests[:args.sss_requests], args.repeats, args.sss_steps)


def delta_difference(trained, reference, weight) -> float:
    """Largest relative (Frobenius) difference between two sides' weight deltas, over the edits.

    Adam's first steps are close to lr * sign(gradient), so elements whose gradient is ~0 may
    move differently under float32 rounding; the delta as a whole is what must agree.
    """
    original = weight.detach()
    return max(((a - b).norm() / (b - original).norm()).item() for a, b in zip(trained, reference))


def edit_ratio(model, tokenizer, requests, repeats):
    trained = model.get_submodule(mlp_out_path(model, BLOCK)).weight
    reference_edit(model, tokenizer, requests[0], steps=2)  # warm-up
    sss_edit(model, tokenizer, requests[0], 2)
    medians, results = interleave({
        "reference": one_at_a_time(lambda r: reference_edit(model, tokenizer, r)),
        "sss": one_at_a_time(lambda r: sss_edit(model, tokenizer, r, STEPS)),
    }, requests, repeats)
    relative = delta_difference(results["sss"], results["reference"], trained)
    print(f"FT-L edits, reference loop: {medians['reference']:.2f} s CPU ({WALL['reference']:.2f} s wall); "
          f"sss: {medians['sss']:.2f} s CPU ({WALL['sss']:.2f} s wall, wall ratio "
          f"{WALL['sss'] / WALL['reference']:.3f}); largest relative difference of the weight deltas {relative:.1e}")
    print(f"RESULT ftl_edit ratio={medians['sss'] / medians['reference']:.3f}")


def edit_each_ratio(model, tokenizer, requests, repeats):
    """All the requests' edits through ``FTL.edit_each`` (trained together) vs the reference loop, one by one."""
    trained = model.get_submodule(mlp_out_path(model, BLOCK)).weight
    sss_edit_each(model, tokenizer, requests[:2], 2)  # warm-up
    medians, results = interleave({
        "reference": one_at_a_time(lambda r: reference_edit(model, tokenizer, r)),
        "each": lambda rs: sss_edit_each(model, tokenizer, rs, len(rs)),
    }, requests, repeats)
    relative = delta_difference(results["each"], results["reference"], trained)
    print(f"FT-L edits of {len(requests)} requests, reference loop one by one: {medians['reference']:.2f} s CPU "
          f"({WALL['reference']:.2f} s wall); edit_each, all trained together: {medians['each']:.2f} s CPU "
          f"({WALL['each']:.2f} s wall, wall ratio {WALL['each'] / WALL['reference']:.3f}); largest relative "
          f"difference of the weight deltas {relative:.1e}")
    print(f"RESULT ftl_edit_each ratio={medians['each'] / medians['reference']:.3f}")


def sss_ratios(model, tokenizer, requests, repeats, steps):
    sss_edit(model, tokenizer, requests[0], 2, SSSRegularizer(C=0.9, target="input_embeds"))  # warm-up
    medians, _ = interleave({
        "plain": one_at_a_time(lambda r: sss_edit(model, tokenizer, r, steps)),
        "last_hidden": one_at_a_time(lambda r: sss_edit(model, tokenizer, r, steps, SSSRegularizer(C=0.9))),
        "input_embeds": one_at_a_time(
            lambda r: sss_edit(model, tokenizer, r, steps, SSSRegularizer(C=0.9, target="input_embeds"))),
    }, requests, repeats)
    per_step = {name: value / (len(requests) * steps) * 1000 for name, value in medians.items()}
    print("FT-L step (sss, CPU ms): " + ", ".join(f"{name} {value:.1f}" for name, value in per_step.items())
          + f"; wall ratio last_hidden / plain {WALL['last_hidden'] / WALL['plain']:.3f}")
    print(f"RESULT sss_last_hidden_step ratio={medians['last_hidden'] / medians['plain']:.3f}")
    print(f"RESULT sss_input_embeds_step ratio={medians['input_embeds'] / medians['plain']:.3f}")


if __name__ == "__main__":
    main()
