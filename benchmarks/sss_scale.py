"""How large each reading of SSS is against J on the unedited SmolLM2-135M (docs/sss.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sss_scale.py [--requests 5] [--block 10]

For each CounterFact request: J (the mean target NLL of target_new, teacher forced) and the SSS
penalty (prompt tokens, reduction "mean") for target = last_hidden, input_embeds and the input of
block ``--block`` (the block FT-L edits by default), and each penalty's ratio to J.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from sss import SSSRegularizer
from sss.data import encode_pairs, load_requests
from sss.losses import target_nll
from sss.models import load_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-val.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSS_SCALE_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    requests = load_requests(args.data, limit=args.requests, seed=0)
    readings = {"last_hidden": SSSRegularizer(target="last_hidden"),
                "input_embeds": SSSRegularizer(target="input_embeds"),
                f"block {args.block}": SSSRegularizer(target=args.block)}
    rows = []
    print(f"{'request':<48} {'J':>7} " + " ".join(f"{name:>14}" for name in readings))
    for request in requests:
        batch = encode_pairs(tokenizer, [request.prompt], [request.target_new])
        with torch.no_grad():
            J = float(target_nll(model(**batch.model_inputs).logits, batch)[0])
        values = [reg.score(model, tokenizer, request.prompt, request.target_new) for reg in readings.values()]
        rows.append([J, *values])
        label = f"{request.prompt} -> {request.target_new}"[:48]
        print(f"{label:<48} {J:7.3f} " + " ".join(f"{v:14.4g}" for v in values))
    table = np.array(rows)
    ratios = table[:, 1:] / table[:, :1]
    print(f"{'median penalty / J':<48} {'':>7} " + " ".join(f"{r:14.3g}" for r in np.median(ratios, 0)))


if __name__ == "__main__":
    main()
