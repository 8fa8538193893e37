"""ROME's and MEMIT's costs on a real model, as ratios against baselines run in the same process.

1. The key statistics' throughput (tokens/s) against a plain forward pass over the same tokens
   of the same corpus (the statistics stop at the edited block, so they may beat it):
   ``RESULT stats_vs_forward`` (goal: >= 0.8).
2. One ROME edit (k*, v* search, the rank-one update, restore) against one FT-L edit of the same
   request with FT-L's defaults for the model: ``RESULT rome_vs_ftl`` (goal: <= 1.5). The
   statistics and the sampled prefixes are prepared once, before timing (they are per model).
3. One MEMIT edit of a batch of ``--batch`` requests, in seconds per request
   (``RESULT memit_batch``), beside the same number of ROME edits one after another.

Each pair is interleaved (alternating which runs first), repeated, and the medians reported::

    OMP_NUM_THREADS=2 python benchmarks/rome_speed.py                 # smollm2-135m
    python benchmarks/rome_speed.py --model tiny-gpt2 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sss import FTL, EditRequest, load_model
from sss.data import load_requests
from sss.editors import MEMIT, ROME
from sss.stats import key_second_moment

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-val.json"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(first, second, repeats: int):
    a, b = [], []
    for i in range(repeats):
        if i % 2:
            b.append(timed(second))
            a.append(timed(first))
        else:
            a.append(timed(first))
            b.append(timed(second))
    return statistics.median(a), statistics.median(b)


def corpus_from(requests, folder: Path) -> Path:
    """A text corpus of the requests' own sentences (enough tokens for a throughput figure)."""
    path = folder / "corpus.txt"
    texts = [r.prompt + " " + r.target_true if r.target_true else r.prompt for r in requests]
    path.write_text("\n\n".join(texts * 4))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--stats-tokens", type=int, default=4096)
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"the CounterFact file {DATA} is missing")
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    requests = [r for r in load_requests(str(DATA), "counterfact") if r.subject][:max(args.batch, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_from(load_requests(str(DATA), "counterfact"), Path(tmp))
        rome = ROME(model, tokenizer, progress=False, stats_corpus=str(corpus), stats_tokens=args.stats_tokens)
        layer = rome.config.layers[0]

        # 1. statistics vs forward over the same tokens
        from sss.stats.moment import _windows, _padded

        windows = _windows(tokenizer, str(corpus), 128)
        taken, total = [], 0
        for window in windows:
            if total >= args.stats_tokens:
                break
            taken.append(window)
            total += len(window)

        def forward_all():
            with torch.no_grad():
                for start in range(0, len(taken), 8):
                    ids, mask = _padded(taken[start:start + 8], tokenizer, model)
                    model(input_ids=ids, attention_mask=mask, use_cache=False)

        counter = {"n": 0}

        def statistics_run():
            counter["n"] += 1
            key_second_moment(model, tokenizer, layer, corpus=str(corpus), tokens=args.stats_tokens,
                              folder=Path(tmp) / f"stats-{counter['n']}", progress=False)

        stats_s, forward_s = interleaved(statistics_run, forward_all, args.repeats)
        print(f"statistics: {args.stats_tokens / stats_s:.0f} tok/s, forward: {total / forward_s:.0f} tok/s "
              f"(block {layer} of {model.config.num_hidden_layers if hasattr(model.config, 'num_hidden_layers') else '?'})")
        print(f"RESULT stats_vs_forward ratio={(args.stats_tokens / stats_s) / (total / forward_s):.3f}")

        # 2. ROME vs FT-L, one edit each
        rome.prepare()
        ftl = FTL(model, tokenizer, progress=False)
        request = requests[0]

        def rome_edit():
            rome.edit(request).restore()

        def ftl_edit():
            ftl.edit(request).restore()

        rome_s, ftl_s = interleaved(rome_edit, ftl_edit, args.repeats)
        print(f"ROME edit {rome_s:.2f} s, FT-L edit {ftl_s:.2f} s ({request.prompt!r} -> {request.target_new!r})")
        print(f"RESULT rome_vs_ftl ratio={rome_s / ftl_s:.3f}")

        # 3. MEMIT, one batch, against ROME one request at a time
        memit = MEMIT(model, tokenizer, progress=False, stats_corpus=str(corpus), stats_tokens=args.stats_tokens)
        memit.prepare()
        batch = requests[:args.batch]

        def memit_batch():
            memit.edit(batch).restore()

        def rome_each():
            handles = [rome.edit(r) for r in batch]
            for handle in reversed(handles):
                handle.restore()

        memit_s, rome_each_s = interleaved(memit_batch, rome_each, max(1, args.repeats // 2))
        print(f"MEMIT batch of {len(batch)}: {memit_s:.1f} s ({memit_s / len(batch):.2f} s/request); "
              f"ROME one by one: {rome_each_s:.1f} s")
        print(f"RESULT memit_batch seconds_per_request={memit_s / len(batch):.3f} "
              f"ratio_vs_rome_each={memit_s / rome_each_s:.3f}")


if __name__ == "__main__":
    main()
