"""What SSS costs FT-L: one training step on smollm2-135m with and without the regularizer.

A step is forward + loss + backward + Adam update of the edited MLP projection, exactly as in
``FTL._apply``. The two sides are interleaved and repeated; medians are reported with their ratio,
and peak resident memory of the process. Not a test; run:

    python benchmarks/sss_overhead.py [--model smollm2-135m] [--repeats 15]
"""
import argparse
import contextlib
import resource
import statistics
import time

import torch

from sss import SSSRegularizer, load_model
from sss.data import encode_pairs
from sss.losses import edit_loss
from sss.models import mlp_out_path, num_blocks, second_order_attention

PROMPTS = ["The mother tongue of Danielle Darrieux is", "The capital of France is"]
TARGETS = ["English", "Berlin"]


def make_step(model, batch, weight, regularizer):
    optimizer = torch.optim.Adam([weight], lr=5e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        attention = second_order_attention(model) if regularizer else contextlib.nullcontext()
        with attention:
            if regularizer is None:
                loss = edit_loss(model(**batch.model_inputs).logits, batch, "prompt_last").mean()
            else:
                logits, _, penalty = regularizer.loss_and_penalty(model, batch)
                loss = regularizer.combine(edit_loss(logits, batch, "prompt_last").mean(), penalty)
        loss.backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    layer = round((num_blocks(model) - 1) / 3)
    weight = model.get_submodule(mlp_out_path(model, layer)).weight
    for p in model.parameters():
        p.requires_grad_(p is weight)
    batch = encode_pairs(tokenizer, PROMPTS, TARGETS)
    sides = {"plain": make_step(model, batch, weight, None),
             "sss": make_step(model, batch, weight, SSSRegularizer(C=0.9))}
    for step in sides.values():  # warm-up
        step()
    times = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, step in sides.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    plain, sss = (statistics.median(times[k]) for k in ("plain", "sss"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {args.model}, FT-L block {layer}, batch of {len(PROMPTS)}, {args.repeats} interleaved repeats")
    print(f"FT-L step without SSS: median {plain * 1000:.1f} ms")
    print(f"FT-L step with SSS:    median {sss * 1000:.1f} ms")
    print(f"ratio with/without:    {sss / plain:.2f}x")
    print(f"peak RSS of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
