"""Run the frozen lower part of a model once, then at every step only the part that changes.

When an editor trains the MLP output projection of block ``k`` (and maybe weights above it),
everything below that projection gives the same values at every step: the blocks below ``k``
and, inside block ``k``, its attention, norms and the MLP up to the projection.
:meth:`BlockCache.capture` runs the model once without a graph through block ``k`` (the blocks
above are called but not run) and keeps what the rest of the network reads from that part:
block ``k``'s input, the projection's input, the residual stream the MLP output is added to,
and the arguments the model hands to each block from ``k`` up
(attention mask, rotary position embeddings, ...; caught by pre-hooks, so no architecture's
call convention is copied here). A step then runs the projection, the blocks above and the
final norm: :meth:`block_output`, :meth:`run_blocks`, :meth:`final_hidden`.

Two facts of every family in ``sss.models.ARCHITECTURES`` make this exact: a block ends with
``residual + mlp(...)``, and the MLP's output is its output projection's output (its dropout
is the identity in eval mode). For GPT-2 and Llama the result is bit for bit the model's own
forward. GPT-J's parallel block adds attention, MLP and residual in another order, so there it
agrees to float rounding. Callers must not use it while modules are in training mode (dropout
would differ at every step).

With ``leaf_at`` the capture also keeps the graph of the frozen part, for a penalty that
differentiates through it (SSS on the input embeddings or on a block below the projection): the
embeddings, or that block's input, are made a leaf, the capture runs with grad enabled, and the
cached tensors carry the graph back to :attr:`BlockCache.leaf`. Its values are the same at every
step, so every step's backward reuses that one graph instead of rebuilding it; a step's final
backward must therefore run to the trained weights only (``backward(inputs=...)``), which also
leaves the graph unfreed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ...models import layout_of, mlp_out_path, num_blocks
from .interrupts import deferred_interrupts


class _StopForward(Exception):
    """Raised at the final norm: the capture needs nothing the head computes."""


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass
class BlockCall:
    """How the model called one block, minus the hidden states (positional or keyword)."""

    args: tuple
    kwargs: dict
    hidden_as_keyword: bool

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_as_keyword:
            return _hidden_of(block(*self.args, **self.kwargs, hidden_states=hidden))
        return _hidden_of(block(hidden, *self.args, **self.kwargs))


@dataclass
class BlockCache:
    model: nn.Module
    start: int  # the block whose MLP output projection is the first thing that changes
    block_input: torch.Tensor  # [B, L, H], what block ``start`` receives
    projection_input: torch.Tensor  # [B, L, I], what its MLP output projection receives
    residual: torch.Tensor  # [B, L, H], what the MLP output is added to
    calls: Dict[int, BlockCall]  # block index -> how the model calls it, for start..N-1
    leaf: Optional[torch.Tensor] = None  # with ``leaf_at``: the tensor the cached graph starts from

    @classmethod
    def capture(cls, model: nn.Module, start: int, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, *,
                leaf_at: Union[str, int, None] = None) -> "BlockCache":
        """One forward pass through block ``start``, stopped before the final norm.

        The blocks above ``start`` are called (so that their pre-hooks see their arguments) but
        not run: the capture costs ``start + 1`` blocks, not the whole depth. Without a graph,
        unless ``leaf_at`` is ``"input_embeds"`` (the embedding module's output) or a block index
        ``k <= start`` (block ``k``'s input): that tensor becomes :attr:`leaf` and the cached
        tensors keep their graph from it.
        """
        layout = layout_of(model)
        blocks = model.get_submodule(layout.blocks)
        block_leaf = isinstance(leaf_at, int) and not isinstance(leaf_at, bool) and 0 <= leaf_at <= start
        if leaf_at not in (None, "input_embeds") and not block_leaf:
            raise ValueError(f"leaf_at must be 'input_embeds' or a block index in 0..{start}, got {leaf_at!r}")
        projection_path = mlp_out_path(model, start)
        mlp = model.get_submodule(projection_path.rsplit(".", 1)[0])
        seen: dict = {"calls": {}}

        def take_call(index):
            def hook(module, args, kwargs):
                keyword = not args
                hidden = kwargs["hidden_states"] if keyword else args[0]
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                seen["calls"][index] = BlockCall(tuple(args[1:]), rest, keyword)
                if index == start:
                    seen["block_input"] = hidden
            return hook

        def take_projection_input(module, args):
            seen["projection_input"] = args[0]

        def zero_mlp(module, args, output):
            # With the MLP's contribution zeroed, block ``start`` returns exactly its residual.
            return torch.zeros_like(output)

        def take_residual(module, args, output):
            seen["residual"] = _hidden_of(output)
            seen["start_output"] = output

        def skip_block(*args, **kwargs):
            # Above ``start`` only the call arguments are wanted (the pre-hooks take them, and
            # they do not depend on the hidden states): hand on block ``start``'s output unchanged.
            return seen["start_output"]

        def stop(module, args):
            raise _StopForward

        def make_leaf(hidden):
            if "leaf" in seen:
                raise RuntimeError(f"BlockCache: the module for leaf_at={leaf_at!r} ran more than once")
            seen["leaf"] = hidden.detach().requires_grad_(True)
            return seen["leaf"]

        def leaf_output(module, args, output):
            return make_leaf(output)

        def leaf_input(module, args, kwargs):
            if args:
                return (make_leaf(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": make_leaf(kwargs["hidden_states"])}

        # Hooks and patched methods go on and come off with Ctrl-C held back (:mod:`.interrupts`):
        # an interrupt can never leave one behind, which would silently change every later forward.
        with deferred_interrupts():
            hooks = []
            if leaf_at == "input_embeds":
                hooks.append(model.get_input_embeddings().register_forward_hook(leaf_output))
            elif leaf_at is not None:  # prepend: block ``start``'s own pre-hook must see the leaf
                hooks.append(blocks[leaf_at].register_forward_pre_hook(leaf_input, with_kwargs=True, prepend=True))
            hooks += [blocks[i].register_forward_pre_hook(take_call(i), with_kwargs=True)
                      for i in range(start, len(blocks))]
            hooks += [model.get_submodule(projection_path).register_forward_pre_hook(take_projection_input),
                      mlp.register_forward_hook(zero_mlp),
                      blocks[start].register_forward_hook(take_residual),
                      model.get_submodule(layout.final_norm).register_forward_pre_hook(stop)]
            skipped = [(blocks[i], blocks[i].__dict__.get("forward")) for i in range(start + 1, len(blocks))]
            for block, _ in skipped:
                block.forward = skip_block
            try:
                with torch.enable_grad() if leaf_at is not None else torch.no_grad():
                    # use_cache=False: a KV cache object caught in the block arguments would grow at every step.
                    model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except _StopForward:
                pass
            finally:
                for hook in hooks:
                    hook.remove()
                for block, previous in skipped:
                    if previous is None:
                        del block.forward
                    else:
                        block.forward = previous
        missing = [k for k in ("block_input", "projection_input", "residual") + ("leaf",) * (leaf_at is not None)
                   if k not in seen]
        if missing or len(seen["calls"]) != len(blocks) - start:
            raise RuntimeError(f"BlockCache could not follow the forward pass of {type(model).__name__} "
                               f"(missing: {missing or 'block calls'})")
        return cls(model, start, seen["block_input"], seen["projection_input"], seen["residual"], seen["calls"],
                   seen.get("leaf"))

    def block_output(self, projection: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Block ``start``'s output from the cached parts and the projection's current weights
        (or from ``projection``, a stand-in for that module applied to its cached input)."""
        if projection is None:
            projection = self.model.get_submodule(mlp_out_path(self.model, self.start))
        return self.residual + projection(self.projection_input)

    def run_blocks(self, hidden: torch.Tensor, first: int, tap: Optional[int] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run blocks ``first``..N-1 on ``hidden``; also return the input of block ``tap`` if asked."""
        if first < self.start:
            raise ValueError(f"block {first} is below the cached block {self.start}")
        blocks = self.model.get_submodule(layout_of(self.model).blocks)
        tapped = None
        for index in range(first, num_blocks(self.model)):
            if index == tap:
                tapped = hidden
            hidden = self.calls[index](blocks[index], hidden)
        return hidden, tapped

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's input: the final norm of the last block's output."""
        return self.model.get_submodule(layout_of(self.model).final_norm)(hidden)
