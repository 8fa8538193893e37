"""SERAC's costs on a real model, as ratios against the bare base model in the same process.

1. **Edit latency**: one ``editor.edit([request])`` (a memory entry plus its classifier key) and
   its ``restore()``, against one forward pass of the base model on the same request.
2. **Inference overhead**: one teacher-forced forward pass of ``editor.model`` on a batch of
   probes, against the base model on the same batch, with 1, 100 and 1000 entries in the memory;
   separately for a batch that nothing routes (out of scope: the classifier's cost only) and one
   whose rows all route (in scope: the counterfactual model answers as well).
3. The same for greedy generation of a few tokens (``generate``).

Both sides of every ratio are interleaved (alternating which runs first), repeated, and their
medians reported. The memory is filled with made-up requests; the probes are never among them.
The classifier's embedding cache is cleared before every timed call, so the numbers include
encoding the inputs (a fresh query), not a cache hit::

    python benchmarks/serac.py                         # smollm2-135m + MiniLM
    python benchmarks/serac.py --model tiny-gpt2 --repeats 3 --sizes 1 100
    python benchmarks/serac.py --classifier cross --sizes 1 10   # the cross-encoder (N x M passes)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sss import SERAC, EditRequest, load_model
from sss.data import encode_pairs, encode_prompts

NAMES = ("Alice Bob Carol David Emma Frank Grace Henry Jack Karen Louis Maria Nathan Olivia Peter Quinn Rachel "
         "Steven Tina Victor").split()
SURNAMES = ("Brennan Castillo Dawson Eriksen Fischer Garner Holloway Ingram Jensen Keller Lindqvist Moreau Novak "
            "Okafor Petrov Quist Romero Sato Tanaka Ulrich").split()
TEMPLATES = ("The favorite color of {} is", "{} lives in the city of", "{} works as a", "The mother tongue of {} is")
ANSWERS = ("green", "Lisbon", "pilot", "Finnish")

# The edit every in-scope probe is about (the first memory entry), and its four in-scope probes.
EDIT = EditRequest("The capital of France is", "Rome")
IN_SCOPE = ["The capital of France is", "France's capital city is", "The capital city of France is",
            "The French capital is"]
OUT_OF_SCOPE = [("Who wrote the play Hamlet?", "Shakespeare"), ("The largest planet in the solar system is", "Jupiter"),
                ("nq question: who sings the song thunderstruck", "AC/DC"), ("Bees make", "honey")]


def filler_requests(count: int):
    """``count`` distinct made-up edits (people x templates), none about the probes."""
    requests = []
    for i in range(count):
        person = f"{NAMES[i % len(NAMES)]} {SURNAMES[(i // len(NAMES)) % len(SURNAMES)]}"
        t = (i // (len(NAMES) * len(SURNAMES))) % len(TEMPLATES)
        requests.append(EditRequest(TEMPLATES[t].format(person), ANSWERS[t]))
    return requests


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(a, b, repeats, device):
    """Median seconds of ``a`` and ``b`` over ``repeats`` rounds, alternating which goes first."""
    times_a, times_b = [], []
    for r in range(repeats):
        order = ((a, times_a), (b, times_b)) if r % 2 == 0 else ((b, times_b), (a, times_a))
        for fn, sink in order:
            sink.append(timed(fn, device))
    return statistics.median(times_a), statistics.median(times_b)


def fresh_queries(editor):
    """Forget cached input embeddings, so every timed query encodes its inputs."""
    encoder = getattr(editor.classifier, "encoder", None)
    if encoder is not None:
        encoder._cache.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--classifier", choices=("embedding", "cross"), default="embedding")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000], help="memory sizes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=5, help="tokens per generation")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    editor = SERAC(model, tokenizer, classifier=args.classifier, progress=False)
    torch.set_grad_enabled(False)
    print(f"model {args.model}, classifier {args.classifier}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats, medians")

    # 1. Edit latency (memory empty; the cost does not depend on its size: see the keys cache).
    single = encode_pairs(tokenizer, [EDIT.prompt], [EDIT.target_new], device=device)

    def edit_and_restore():
        fresh_queries(editor)  # the edit's text is encoded afresh, as a new edit's would be
        editor.edit([EDIT]).restore()

    edit_s, forward_s = interleaved(edit_and_restore, lambda: model(**single.model_inputs), args.repeats, device)
    print(f"\nedit + restore: {edit_s * 1e3:8.2f} ms   base forward: {forward_s * 1e3:8.2f} ms   "
          f"ratio {edit_s / forward_s:6.2f}x")

    inside = encode_pairs(tokenizer, IN_SCOPE, [EDIT.target_new] * len(IN_SCOPE), device=device)
    outside = encode_pairs(tokenizer, [p for p, _ in OUT_OF_SCOPE], [a for _, a in OUT_OF_SCOPE], device=device)
    inside_prompts = encode_prompts(tokenizer, IN_SCOPE, device=device)
    outside_prompts = encode_prompts(tokenizer, [p for p, _ in OUT_OF_SCOPE], device=device)
    generation = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    print(f"\n{'entries':>8} {'batch':>12} {'call':>9} {'SERAC ms':>10} {'base ms':>9} {'ratio':>7} {'routed':>7}")
    filler = filler_requests(max(args.sizes))
    for size in sorted(args.sizes):
        # The in-scope probes' edit is the first entry; the rest is filler.
        editor.memory.clear()
        editor.edit([EDIT])
        if size > 1:
            editor.edit(filler[:size - 1])
        for label, batch, prompts in (("out-of-scope", outside, outside_prompts), ("in-scope", inside, inside_prompts)):
            routed = sum(e is not None for e in editor.model.route(editor.model.row_texts(
                batch.input_ids, batch.attention_mask)).entries)

            def serac_forward():
                fresh_queries(editor)
                editor.model(**batch.model_inputs)

            def serac_generate():
                fresh_queries(editor)
                editor.model.generate(**prompts.model_inputs, **generation)

            for call, ours, theirs in (("forward", serac_forward, lambda: model(**batch.model_inputs)),
                                       ("generate", serac_generate,
                                        lambda: model.generate(**prompts.model_inputs, **generation))):
                a, b = interleaved(ours, theirs, args.repeats, device)
                print(f"{len(editor.memory):>8} {label:>12} {call:>9} {a * 1e3:10.2f} {b * 1e3:9.2f} {a / b:6.2f}x "
                      f"{routed:>4}/{len(batch)}")
    editor.memory.clear()


if __name__ == "__main__":
    main()
