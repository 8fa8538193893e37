"""The edited system SERAC presents as ``editor.model``: base model, memory, classifier, counterfactual.

For every input row the scope classifier scores the row's text against every memory entry; if
the best probability exceeds the threshold the counterfactual model answers, reading
``edit text + separator + input``, otherwise the base model answers. The wrapper behaves like a
Hugging Face causal LM for what evaluation needs:

* ``model(input_ids=..., attention_mask=...).logits`` (either padding side): ``[B, L, V]``
  aligned with the input positions. The base model runs on the whole batch and routed rows
  get their real positions overwritten, so rows that nothing routes carry *exactly* the base
  model's logits (with an empty memory the base model's own output is returned).
* ``model.generate(input_ids=..., attention_mask=..., max_new_tokens=..., ...)`` (left padding):
  ``[B, L + new]``, the inputs followed by the generated tokens. Routing is decided once, on the
  prompt; a generation never switches models half way.

The row's text is the decoded real tokens. Under teacher forcing that includes the target, so
the classifier is trained on inputs both with and without their answers appended.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...data import pad_id, pad_sequences
from .conditioning import input_columns, prefix_ids
from .memory import EditMemory, MemoryEntry
from ...losses.head import logits_at

UNSUPPORTED = ("inputs_embeds", "labels", "past_key_values")


@dataclass
class Routing:
    """Per input row: the memory entry that answers it (None: the base model) and its probability."""

    entries: List[Optional[MemoryEntry]]
    probabilities: torch.Tensor  # [N], the best in-scope probability over the memory (0 when empty)

    @property
    def routed_rows(self) -> List[int]:
        return [i for i, entry in enumerate(self.entries) if entry is not None]


class RoutedModel(nn.Module):
    """``RoutedModel(base, counterfactual, classifier, memory, tokenizer, threshold=0.5, separator="\\n")``."""

    def __init__(self, base: nn.Module, counterfactual: nn.Module, classifier: nn.Module, memory: EditMemory,
                 tokenizer, *, threshold: float = 0.5, separator: str = "\n"):
        super().__init__()
        self.base = base
        self.counterfactual = counterfactual
        self.classifier = classifier
        self.memory = memory
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.separator = separator
        self._prefixes: Dict[str, List[int]] = {}

    # -- what code written for a Hugging Face causal LM looks at ---------------------------------

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return getattr(self.base, "generation_config", None)

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    # -- routing -----------------------------------------------------------------------------------

    @torch.no_grad()
    def route(self, texts: Sequence[str]) -> Routing:
        """Which memory entry, if any, answers each text."""
        texts = list(texts)
        if len(self.memory) == 0 or not texts:
            return Routing([None] * len(texts), torch.zeros(len(texts)))
        entries = self.memory.entries
        logits = self.classifier.logits(texts, [e.text for e in entries], self.memory.keys_for(self.classifier))
        best, index = logits.float().max(-1)
        probabilities = torch.sigmoid(best).cpu()
        chosen = [entries[int(j)] if p > self.threshold else None for p, j in zip(probabilities.tolist(), index)]
        return Routing(chosen, probabilities)

    def row_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> List[str]:
        """The text of each row's real tokens (padding dropped wherever it sits)."""
        return [self.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
                for ids, mask in zip(input_ids, attention_mask)]

    def prefix(self, entry: MemoryEntry) -> List[int]:
        if entry.text not in self._prefixes:
            self._prefixes[entry.text] = prefix_ids(self.tokenizer, entry.text, self.separator)
        return self._prefixes[entry.text]

    # -- the causal LM interface -------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor = None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
        _refuse_unsupported(kwargs)
        if input_ids is None:
            raise ValueError("SERAC's routed model needs input_ids (routing reads the text)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        output = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if len(self.memory) == 0:
            return output
        routing = self.route(self.row_texts(input_ids, attention_mask))
        rows = routing.routed_rows
        if not rows:
            return output
        logits = output.logits.clone()
        real = [attention_mask[r].bool() for r in rows]
        prefixes = [self.prefix(routing.entries[r]) for r in rows]
        sequences = [prefix + input_ids[r][m].tolist() for prefix, r, m in zip(prefixes, rows, real)]
        cf_ids, cf_mask = pad_sequences(sequences, self._pad_id(), left=False, device=input_ids.device)
        # The head runs on the inputs' own positions only, not on the edit prefixes before them.
        columns = input_columns([len(prefix) for prefix in prefixes], max(int(m.sum()) for m in real),
                                cf_ids.shape[1], cf_ids.device)
        cf_logits = logits_at(self.counterfactual, {"input_ids": cf_ids, "attention_mask": cf_mask}, columns)
        for i, (r, m) in enumerate(zip(rows, real)):
            logits[r, m] = cf_logits[i, :int(m.sum())].to(logits.dtype)
        from transformers.modeling_outputs import CausalLMOutputWithPast  # here: importing transformers is slow

        return CausalLMOutputWithPast(logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor = None, attention_mask: Optional[torch.Tensor] = None, **kwargs
                 ) -> torch.Tensor:
        _refuse_unsupported(kwargs)
        if kwargs.get("return_dict_in_generate"):
            raise ValueError("SERAC's routed model returns generated ids only; drop return_dict_in_generate")
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("SERAC's routed model generates one sequence per input (num_return_sequences=1)")
        if input_ids is None:
            raise ValueError("SERAC's routed model needs input_ids (routing reads the text)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.setdefault("pad_token_id", self._pad_id())
        routing = self.route(self.row_texts(input_ids, attention_mask)) if len(self.memory) else None
        if routing is None or not routing.routed_rows:
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pad = self._pad_id()
        rows_cf = routing.routed_rows
        rows_base = [r for r in range(len(input_ids)) if routing.entries[r] is None]
        new_tokens: Dict[int, torch.Tensor] = {}
        if rows_base:
            sub_ids, sub_mask = _trim_left(input_ids[rows_base], attention_mask[rows_base])
            out = self.base.generate(input_ids=sub_ids, attention_mask=sub_mask, **kwargs)
            new_tokens.update(zip(rows_base, out[:, sub_ids.shape[1]:]))
        sequences = [self.prefix(routing.entries[r]) + input_ids[r][attention_mask[r].bool()].tolist()
                     for r in rows_cf]
        cf_ids, cf_mask = pad_sequences(sequences, pad, left=True, device=input_ids.device)
        out = self.counterfactual.generate(input_ids=cf_ids, attention_mask=cf_mask, **kwargs)
        new_tokens.update(zip(rows_cf, out[:, cf_ids.shape[1]:]))
        width = max(t.shape[0] for t in new_tokens.values())
        result = torch.full((len(input_ids), input_ids.shape[1] + width), pad, dtype=input_ids.dtype,
                            device=input_ids.device)
        result[:, :input_ids.shape[1]] = input_ids
        for r, tokens in new_tokens.items():
            result[r, input_ids.shape[1]:input_ids.shape[1] + tokens.shape[0]] = tokens
        return result

    def _pad_id(self) -> int:
        return pad_id(self.tokenizer)


def _refuse_unsupported(kwargs: dict) -> None:
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"SERAC's routed model does not take {name}: it routes on input_ids "
                             "and returns logits only")


def _trim_left(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    """Drop leading columns that are padding in every row (left when a sub-batch is taken)."""
    used = attention_mask.bool().any(0).nonzero()
    start = int(used[0]) if len(used) else 0
    return input_ids[:, start:], attention_mask[:, start:]
