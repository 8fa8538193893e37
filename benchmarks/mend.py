"""MEND's costs on a real model, as ratios against baselines run in the same process.

1. One MEND edit (inner forward/backward, the transform, the weight update, and the restore)
   against one plain forward + backward pass of the model on the same request (the cheapest
   possible gradient-based edit): ``RESULT mend_edit_vs_fwd_bwd``.
2. The same edit against a straightforward reference written here: a full backward with every
   parameter requiring grad, each weight's factors transformed on their own, and the update
   summed from explicit per-token outer products ``δ̃_t ũ_tᵀ``: ``RESULT mend_edit``.
3. One training step (one episode: edit prompt + rephrasing + locality input, then Adam)
   against the same step built on that reference edit, with the LM head on every position:
   ``RESULT mend_train_step``.
4. One training step with the SSS regularizer against the same step without it (SSS adds a
   second-order term): ``RESULT mend_sss_step``.
5. Peak memory of each training step above what was held before it: CUDA's peak allocation on a
   GPU; on the CPU, the process's resident memory sampled every millisecond during the step
   (Linux ``/proc/self/statm``), after handing freed heap memory back to the OS (glibc
   ``malloc_trim``) so that the step has to allocate what it uses.

Each pair of sides is interleaved (alternating which runs first), repeated, and the medians
reported with their ratio (optimised or "with" time / reference or "without" time)::

    OMP_NUM_THREADS=1 python benchmarks/mend.py      # smollm2-135m, MEND's defaults (rank 1920)
    python benchmarks/mend.py --model tiny-gpt2 --repeats 3
    python benchmarks/mend.py --sss-target input_embeds   # the other reading of SSS (costlier)
    OMP_NUM_THREADS=1 python benchmarks/mend.py --only-edit --repeats 9   # results 1-2 only (minutes)
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
from torch.func import functional_call

from sss import MEND, EditRequest, LocalityProbe, SSSRegularizer, load_model
from sss.data import encode_pairs
from sss.losses import locality_kl, target_nll
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


# -- the straightforward reference -------------------------------------------------------------


def reference_new_weights(editor, batch):
    """``W − η Σ_t δ̃_t ũ_tᵀ`` the plain way: full backward, one transform per weight, outer products."""
    model = editor.base_model
    params = dict(model.named_parameters())
    captured, hooks = {}, []
    for name in editor.weight_names:
        def keep(module, args, output, name=name):
            output.retain_grad()
            captured[name] = (args[0], output)
        hooks.append(model.get_submodule(name.rsplit(".", 1)[0]).register_forward_hook(keep))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = target_nll(model(**batch.model_inputs).logits, batch).mean()
            loss.backward()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    real = batch.attention_mask.bool().reshape(-1)
    new = {}
    for name in editor.weight_names:
        inputs, output = captured[name]
        u = inputs.detach().reshape(-1, inputs.shape[-1])[real]
        delta = output.grad.reshape(-1, output.shape[-1])[real]
        u_t, delta_t = editor.networks.transform(name, u, delta)
        if editor.conv1d[name]:
            outer = u_t[:, :, None] * delta_t[:, None, :]
        else:
            outer = delta_t[:, :, None] * u_t[:, None, :]
        new[name] = params[name].detach() - editor.networks.edit_lr(name) * outer.sum(0)
    return new


def reference_training_loss(editor, episode):
    """``c_e·L_e + c_loc·L_loc`` of one episode on the reference edit, full logits everywhere."""
    model = editor.base_model
    device = next(model.parameters()).device
    request = episode.requests[0]

    def encode(prompts, targets):
        return encode_pairs(editor.tokenizer, list(prompts), list(targets), device=device)

    edit = encode([request.prompt], [request.target_new])
    rephrase = encode(request.rephrase_prompts, [request.target_new] * len(request.rephrase_prompts))
    loc = encode([p.prompt for p in episode.locality], [p.answer for p in episode.locality])
    with torch.no_grad():
        pre_loc = model(**loc.model_inputs).logits
    new = reference_new_weights(editor, edit)

    def call(batch):
        return functional_call(model, new, args=(), kwargs=batch.model_inputs).logits

    edit_loss = torch.cat([target_nll(call(edit), edit), target_nll(call(rephrase), rephrase)]).mean()
    loc_loss = locality_kl(pre_loc, call(loc), loc.attention_mask.bool())
    return editor.config.c_e * edit_loss + editor.config.c_loc * loc_loss


def reference_training_step(editor, optimizer, episode):
    def step():
        optimizer.zero_grad(set_to_none=True)
        reference_training_loss(editor, episode).backward()
        optimizer.step()
        editor.after_optimizer_step(lambda t: t)

    return step


def report(name, label_a, t_a, label_b, t_b):
    print(f"{label_a}: {t_a * 1e3:8.1f} ms | {label_b}: {t_b * 1e3:8.1f} ms")
    print(f"RESULT {name} ratio={t_b / t_a:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=1920, help="MEND's rank (default: MEND's 1920)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sss-target", choices=("last_hidden", "input_embeds"), default="last_hidden")
    parser.add_argument("--only-edit", action="store_true", help="measure the edit (results 1-2) only, no training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model, tokenizer, editor = build(args.model, args.rank, None, device)
    print(f"model {args.model} on {device}, {torch.get_num_threads()} threads; MEND rank {args.rank}, "
          f"{len(editor.weight_names)} edited weights, "
          f"{sum(p.numel() for p in editor.networks.parameters()) / 1e6:.1f}M editor parameters")

    batch = encode_pairs(tokenizer, [REQUEST.prompt], [REQUEST.target_new], device=device)
    params = dict(model.named_parameters())
    edited = [params[n] for n in editor.weight_names]

    def forward_backward():
        loss = target_nll(model(**batch.model_inputs).logits, batch).mean()
        torch.autograd.grad(loss, edited)

    def mend_edit():
        editor.edit(REQUEST).restore()

    def reference_edit():
        originals = {n: params[n].detach().clone() for n in editor.weight_names}
        with torch.no_grad():
            for name, value in reference_new_weights(editor, batch).items():
                params[name].copy_(value)
            for name, value in originals.items():
                params[name].copy_(value)

    originals = {n: params[n].detach().clone() for n in editor.weight_names}
    with torch.no_grad():
        expected = reference_new_weights(editor, batch)
    with editor.edit(REQUEST):
        gap = max(float((params[n].detach() - expected[n]).abs().max()) for n in editor.weight_names)
        step = max(float((params[n].detach() - originals[n]).abs().max()) for n in editor.weight_names)
    print(f"edited weights, optimised vs reference: largest difference {gap:.2e} (largest change of a weight "
          f"by the edit {step:.2e})")

    t_fb, t_edit = interleaved(forward_backward, mend_edit, args.repeats, device)
    report("mend_edit_vs_fwd_bwd", "one forward+backward", t_fb, "one MEND edit (+restore)", t_edit)
    t_ref, t_edit = interleaved(reference_edit, mend_edit, args.repeats, device)
    report("mend_edit", "reference edit (+restore)", t_ref, "optimised edit (+restore)", t_edit)
    if args.only_edit:
        return

    for p in model.parameters():
        p.requires_grad_(False)  # as fit() does
    episode = Episode((REQUEST,), REQUEST.locality)
    reference_editor = MEND(model, tokenizer, rank=args.rank, progress=False)
    reference_editor.load_state_dict(editor.state_dict())
    editor.networks.train()
    reference_editor.networks.train()
    plain_step = training_step(editor, optimizer_for(editor), episode)
    reference_step = reference_training_step(reference_editor, optimizer_for(reference_editor), episode)
    t_ref, t_plain = interleaved(reference_step, plain_step, args.repeats, device)
    report("mend_train_step", "reference training step", t_ref, "optimised training step", t_plain)
    del reference_editor, reference_step

    sss = SSSRegularizer(C=0.9, target=args.sss_target)
    sss_editor = MEND(model, tokenizer, rank=args.rank, regularizer=sss, progress=False)
    sss_editor.load_state_dict(editor.state_dict())
    sss_editor.networks.train()
    sss_step = training_step(sss_editor, optimizer_for(sss_editor), episode)
    t_plain, t_sss = interleaved(plain_step, sss_step, args.repeats, device)
    report("mend_sss_step", "training step without SSS", t_plain, f"with SSS (C=0.9, {args.sss_target})", t_sss)
    peaks = {"plain": [], "sss": []}
    for i in range(args.repeats):
        order = (("plain", plain_step), ("sss", sss_step)) if i % 2 == 0 else (("sss", sss_step), ("plain", plain_step))
        for label, step in order:
            peaks[label].append(step_peak_mib(step, device))
    plain_mib, sss_mib = statistics.median(peaks["plain"]), statistics.median(peaks["sss"])
    kind = "CUDA allocation" if device.type == "cuda" else "resident memory"
    print(f"peak {kind} during a step, above its level before: without SSS {plain_mib:.0f} MiB | with SSS "
          f"{sss_mib:.0f} MiB | ratio = {sss_mib / max(plain_mib, 1e-9):.2f}")
    if device.type != "cuda":
        print(f"resident memory of this process after the runs: {resident_mib():.0f} MiB")


if __name__ == "__main__":
    main()
