"""MEND's costs on a real model, as ratios against baselines run in the same process.

1. One MEND edit (inner forward/backward, the transform, the weight update, and the restore)
   against one plain forward + backward pass of the model on the same request (the cheapest
   possible gradient-based edit).
2. One training step (one episode: edit prompt + rephrasing + locality input, then Adam) with
   the SSS regularizer against the same step without it (SSS adds a second-order term).
3. Peak memory of each training step above what was held before it: CUDA's peak allocation on a
   GPU; on the CPU, the process's resident memory sampled every millisecond during the step
   (Linux ``/proc/self/statm``), after handing freed heap memory back to the OS (glibc
   ``malloc_trim``) so that the step has to allocate what it uses.

Each pair of sides is interleaved (alternating which runs first), repeated, and the medians
reported with their ratio::

    python benchmarks/mend.py                        # smollm2-135m, MEND's defaults (rank 1920)
    python benchmarks/mend.py --model tiny-gpt2 --repeats 3
    python benchmarks/mend.py --sss-target input_embeds   # the other reading of SSS (costlier)
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import threading
import time

import torch

from sss import MEND, EditRequest, LocalityProbe, SSSRegularizer, load_model
from sss.data import encode_pairs
from sss.losses import target_nll
from sss.train import Episode

REQUEST = EditRequest("The name of the country of citizenship of Leonardo DiCaprio is", "Syria",
                      rephrase_prompts=("Leonardo DiCaprio is a citizen of",),
                      locality=(LocalityProbe("nq question: who played desmond doss father in hacksaw ridge",
                                              "Hugo Weaving"),))
STATS_REQUESTS = [EditRequest("The capital of France is", "Rome"), EditRequest("Water boils at", "fifty degrees"),
                  EditRequest("The Eiffel Tower is located in", "Berlin")]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(a, b, repeats, device):
    """Median seconds of ``a`` and ``b``, alternating which goes first."""
    times_a, times_b = [], []
    a(), b()  # warm-up
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t_first, t_second = timed(first, device), timed(second, device)
        ta, tb = (t_first, t_second) if i % 2 == 0 else (t_second, t_first)
        times_a.append(ta)
        times_b.append(tb)
    return statistics.median(times_a), statistics.median(times_b)


def build(model_name, rank, regularizer, device):
    model, tokenizer = load_model(model_name, device=device)
    editor = MEND(model, tokenizer, rank=rank, regularizer=regularizer, progress=False)
    editor.init_statistics(STATS_REQUESTS)
    return model, tokenizer, editor


def training_step(editor, optimizer, episode):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = editor.training_loss(episode)
        loss.backward()
        optimizer.step()
        editor.after_optimizer_step(lambda t: t)

    return step


def optimizer_for(editor):
    return torch.optim.Adam(editor.param_groups())


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_free_memory() -> None:
    """Give freed heap memory back to the OS, so the next step's allocations show in the RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure is then a lower bound
        pass


def step_peak_mib(step, device) -> float:
    """How far memory rises above its level before ``step`` while the step runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    gc.collect()
    release_free_memory()
    before, peak, done = resident_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], resident_mib()) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=1920, help="MEND's rank (default: MEND's 1920)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sss-target", choices=("last_hidden", "input_embeds"), default="last_hidden")
    args = parser.parse_args()
    device = torch.device(args.device)

    model, tokenizer, editor = build(args.model, args.rank, None, device)
    print(f"model {args.model} on {device}, {torch.get_num_threads()} threads; MEND rank {args.rank}, "
          f"{len(editor.weight_names)} edited weights, "
          f"{sum(p.numel() for p in editor.networks.parameters()) / 1e6:.1f}M editor parameters")

    batch = encode_pairs(tokenizer, [REQUEST.prompt], [REQUEST.target_new], device=device)
    params = [p for n, p in model.named_parameters() if n in editor.weight_names]

    def forward_backward():
        loss = target_nll(model(**batch.model_inputs).logits, batch).mean()
        torch.autograd.grad(loss, params)

    def mend_edit():
        editor.edit(REQUEST).restore()

    t_fb, t_edit = interleaved(forward_backward, mend_edit, args.repeats, device)
    print(f"one forward+backward: {t_fb * 1e3:8.1f} ms | one MEND edit (+restore): {t_edit * 1e3:8.1f} ms | "
          f"ratio edit/fwd+bwd = {t_edit / t_fb:.2f}")

    for p in model.parameters():
        p.requires_grad_(False)
    sss = SSSRegularizer(C=0.9, target=args.sss_target)
    sss_editor = MEND(model, tokenizer, rank=args.rank, regularizer=sss, progress=False)
    sss_editor.load_state_dict(editor.state_dict())
    episode = Episode((REQUEST,), REQUEST.locality)
    editor.networks.train()
    sss_editor.networks.train()
    plain_step = training_step(editor, optimizer_for(editor), episode)
    sss_step = training_step(sss_editor, optimizer_for(sss_editor), episode)
    t_plain, t_sss = interleaved(plain_step, sss_step, args.repeats, device)
    peaks = {"plain": [], "sss": []}
    for i in range(args.repeats):
        order = (("plain", plain_step), ("sss", sss_step)) if i % 2 == 0 else (("sss", sss_step), ("plain", plain_step))
        for label, step in order:
            peaks[label].append(step_peak_mib(step, device))
    plain_mib, sss_mib = statistics.median(peaks["plain"]), statistics.median(peaks["sss"])
    kind = "CUDA allocation" if device.type == "cuda" else "resident memory"
    print(f"training step without SSS: {t_plain * 1e3:8.1f} ms | with SSS (C=0.9, {args.sss_target}): "
          f"{t_sss * 1e3:8.1f} ms | ratio with/without = {t_sss / t_plain:.2f}")
    print(f"peak {kind} during a step, above its level before: without SSS {plain_mib:.0f} MiB | with SSS "
          f"{sss_mib:.0f} MiB | ratio = {sss_mib / max(plain_mib, 1e-9):.2f}")
    if device.type != "cuda":
        print(f"resident memory of this process after the runs: {resident_mib():.0f} MiB")


if __name__ == "__main__":
    main()
