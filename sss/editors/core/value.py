"""The value ``v*`` of locate-then-edit editors: what a module outputs at the subject's last token
when the model says the target (ROME: the MLP's output; MEMIT: the block's, the residual stream).

``v* = v + δ``, where ``v`` is the module's output at the subject's last token of the prompt and
``δ`` is found by Adam on

    NLL(target | prefix + prompt)  +  kl_factor · KL(p_δ || p) on "{subject} is a"  +  wd · ||δ|| / ||v||²

with ``δ`` added to the module's output at the subject's last token of every text, kept in the ball
``||δ|| <= clamp_norm_factor · ||v||``. The NLL is the mean over the prefixed prompts of each one's
mean target-token NLL (every prompt has the same target, so this is the original's mean over
tokens). The KL term reads the next-token distribution at the subject's last token of "{subject} is
a", as the original does. With a regularizer the step optimises Eq. 10 on this loss,
``(1 - C) · L + C · penalty``, the penalty taken on the prefixed prompts' forward pass.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...data import EditRequest, encode_for
from ...losses import target_nll
from ...models import layout_of, mlp_out_path, second_order_attention
from ...progress import progress
from .interrupts import raise_if_interrupted
from .subject import in_context, read_at, subject_last_index

__all__ = ["mlp_path", "optimise_value"]


def mlp_path(model, block: int) -> str:
    """The MLP module of ``block`` (its output projection's parent)."""
    return mlp_out_path(model, block).rsplit(".", 1)[0]


@contextlib.contextmanager
def added_at(module, rows_and_positions: List[Tuple[int, int]], delta: torch.Tensor):
    """Add ``delta`` to ``module``'s output at each ``(row, position)`` while the block runs."""
    rows = torch.tensor([r for r, _ in rows_and_positions])
    positions = torch.tensor([p for _, p in rows_and_positions])

    def add(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # a block returns a tuple in some versions
        hidden = hidden.clone()
        hidden[rows, positions] += delta.to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    hook = module.register_forward_hook(add)
    try:
        yield
    finally:
        hook.remove()


def optimise_value(model, tokenizer, request: EditRequest, module, prefixes: List[str], config, regularizer,
                   *, show_progress: bool = False, desc: str = "v*") -> Tuple[torch.Tensor, torch.Tensor, List[dict]]:
    """``(v*, v, history)`` for ``request`` at ``module``'s output; the model's weights are left as they are."""
    layout_of(model)
    texts = [in_context(prefix, request.prompt) for prefix in prefixes]
    batch = encode_for(model, tokenizer, texts, [request.target_new] * len(texts))
    lookups = [(row, subject_last_index(tokenizer, text, request.subject, len(text) - len(request.prompt)))
               for row, text in enumerate(texts)]
    kl_text = f"{request.subject} is a"
    kl_inputs = tokenizer(kl_text, add_special_tokens=True, return_tensors="pt").to(batch.input_ids.device)
    kl_lookup = [(0, subject_last_index(tokenizer, kl_text, request.subject))]

    value = read_at(model, tokenizer, module, [request.prompt], request.subject, request.prompt, output=True)[0]
    delta = torch.zeros_like(value, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=config.v_lr)
    max_norm = config.clamp_norm_factor * value.norm()
    kl_initial: Optional[torch.Tensor] = None
    history: List[dict] = []
    steps = progress(range(config.v_steps), desc=desc, enabled=show_progress, inner=True, unit="step")
    for step in steps:
        raise_if_interrupted()  # a safe point: Ctrl-C stops the edit here, and it is undone
        optimizer.zero_grad(set_to_none=True)
        with added_at(module, lookups, delta):
            if regularizer is None:
                nll, penalty = target_nll(model(**batch.model_inputs).logits, batch).mean(), None
            else:
                with second_order_attention(model):
                    _, per_example, penalty = regularizer.loss_and_penalty(model, batch)
                nll = per_example.mean()
        with added_at(module, kl_lookup, delta):
            kl_log_probs = F.log_softmax(model(**kl_inputs).logits[0, kl_lookup[0][1]].float(), dim=-1)
        if kl_initial is None:
            kl_initial = kl_log_probs.detach()
        kl = config.kl_factor * F.kl_div(kl_initial, kl_log_probs, log_target=True, reduction="sum")
        decay = config.v_weight_decay * delta.norm() / value.norm() ** 2
        loss = nll + kl + decay
        record = {"step": step, "nll": nll.item(), "kl": kl.item(), "weight_decay": decay.item(), "loss": loss.item()}
        if penalty is not None:
            record["penalty"] = penalty.item()
        history.append(record)
        steps.set_postfix(loss=f"{record['loss']:.4f}")
        if record["loss"] < config.early_stop_loss or step == config.v_steps - 1:
            break
        (loss if penalty is None else regularizer.combine(loss, penalty)).backward(inputs=[delta])
        optimizer.step()
        with torch.no_grad():
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    return (value + delta).detach(), value, history

