"""What training buys SERAC on a real model: a trained checkpoint against the untrained system.

Given a checkpoint from ``sss train serac`` (and the same validation requests), prints for the
untrained SERAC (MiniLM at its initial similarity, the counterfactual model a copy of the base
model) and the trained one:

1. **scope accuracy** on the validation requests, all their edits in memory at once: each
   rephrasing must route to its own edit (in scope), each locality input to none (out of scope);
2. **single-edit** reliability, generality and locality (``sss.eval.evaluate``, mode ``single``,
   teacher-forced token accuracy; locality is agreement with the unedited model);
3. **sequential editing**: ``--sequential`` edits one after another; the memory must hold all of
   them, and the first edit's reliability right after it is compared with after the last edit.

    sss train serac --model smollm2-135m --train ../shared/data/zsre/zsre_mend_train-1k.json \\
        --out runs/serac --edit-batch-size 4 --episodes-per-step 1 --max-steps 60
    python benchmarks/serac_quality.py --checkpoint runs/serac \\
        --val ../shared/data/counterfact/counterfact-val.json:counterfact --limit 50 --sequential 100
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from sss import SERAC, evaluate, load_model
from sss.data import load_requests, parse_source


def scope_accuracy(editor, requests):
    """Routing accuracy with every request's edit in memory (rephrasings in, locality out)."""
    with editor.edit(requests):
        entries = {id(e.request): e for e in editor.memory}
        rephrasings = [(p, r) for r in requests for p in r.rephrase_prompts]
        localities = [p.prompt for r in requests for p in r.locality]
        routed_in = editor.model.route([p for p, _ in rephrasings]).entries
        routed_out = editor.model.route(localities).entries
    inside = [e is not None and e is entries[id(r)] for e, (_, r) in zip(routed_in, rephrasings)]
    outside = [e is None for e in routed_out]
    return {"scope_in_acc": sum(inside) / max(1, len(inside)), "scope_out_acc": sum(outside) / max(1, len(outside)),
            "scope_acc": (sum(inside) + sum(outside)) / max(1, len(inside) + len(outside))}


def sequential_check(editor, requests):
    """Edit ``requests`` one by one; the first edit's reliability right after it and after all."""
    results = evaluate(editor, requests, mode="sequential", measure_each=True, generate=False, progress=False)
    first = results.records[0]
    handles = [editor.edit(r) for r in requests]
    held = len(editor.memory)
    for handle in reversed(handles):
        handle.restore()
    return {"edits": len(requests), "memory_entries": held,
            "first_edit_reliability_immediately": first["immediate"]["reliability"]["token_acc"],
            "first_edit_reliability_after_all": first["post"]["reliability"]["token_acc"],
            "reliability_after_all": results.summary["post"]["reliability"]["token_acc"],
            "locality_after_all": results.summary["post"]["locality"]["agreement"]}


def measure(editor, requests, sequence):
    started = time.perf_counter()
    out = scope_accuracy(editor, requests)
    single = evaluate(editor, requests, mode="single", generate=False, progress=False).summary["post"]
    out |= {"reliability": single["reliability"]["token_acc"],
            "generality": single.get("generality", {}).get("token_acc"),
            "locality": single["locality"]["agreement"]}
    if sequence:
        out["sequential"] = sequential_check(editor, sequence)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a SERAC checkpoint (run folder or its best/)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--val", required=True, metavar="PATH[:format]", help="validation requests")
    parser.add_argument("--limit", type=int, default=50, help="validation requests for scope and single edits")
    parser.add_argument("--sequential", type=int, default=100, help="edits in the sequential check (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-untrained", action="store_true", help="measure the checkpoint only")
    args = parser.parse_args()

    path, data_format = parse_source(args.val)
    pool = load_requests(path, data_format, limit=max(args.limit, args.sequential), seed=args.seed)
    requests, sequence = pool[:args.limit], pool[:args.sequential]
    model, tokenizer = load_model(args.model)
    torch.manual_seed(args.seed)
    report = {}
    for name in ("trained",) if args.skip_untrained else ("untrained", "trained"):
        editor = (SERAC(model, tokenizer, model_name=args.model, progress=False) if name == "untrained"
                  else SERAC.load(args.checkpoint, model, tokenizer, progress=False))
        report[name] = measure(editor, requests, sequence)
        print(name, json.dumps(report[name], indent=1), flush=True)
        del editor
    print(json.dumps(report))


if __name__ == "__main__":
    main()
