"""``load_model``: a built-in name, a local folder, or any hub id transformers can resolve.

A hub id may have an owner (``HuggingFaceTB/SmolLM2-135M``) or not (the field's canonical ids:
``gpt2``, ``gpt2-xl``, ``t5-small``). An id already in the hub cache loads from it without
touching the network; one that is not is downloaded, unless the hub is offline
(``HF_HUB_OFFLINE=1``), where the error says how to make it available instead of retrying.
Causal LMs load with ``AutoModelForCausalLM``, encoder-decoders with ``AutoModelForSeq2SeqLM``.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Optional

from ..files import read_json
from .args import as_device, as_dtype, check_load_arguments
from .builtin import BUILTIN_MODELS, TINY_MODELS, build_tiny, smollm2_folder

__all__ = ["hub_cache_dir", "load_model"]

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
TRUE = {"1", "on", "yes", "true"}


def load_model(name_or_path: str, *, dtype=None, device=None, seed: int = 0):
    """Return ``(model, tokenizer)`` in eval mode, with a pad token set.

    ``name_or_path``: a built-in name (``smollm2-135m``, ``tiny-gpt2``, ``tiny-llama``), a local
    folder, or a hub id with or without an owner. ``dtype`` (a floating ``torch.dtype`` or its
    name: "float16", "bf16", ...) defaults to float32 and ``device`` to the CPU; both are checked
    before anything loads. ``seed`` seeds the random built-in models (it does not touch the
    global RNG).
    """
    check_load_arguments(name_or_path, seed)
    dtype, device = as_dtype(dtype), as_device(device)
    name = str(name_or_path)
    if name in TINY_MODELS:
        model, tokenizer = build_tiny(name, seed)
    elif name == "smollm2-135m":
        model, tokenizer = load_pretrained(str(smollm2_folder()), {})
    else:
        model, tokenizer = load_pretrained(*resolve(name))
    _ensure_pad_token(tokenizer)
    model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def hub_offline() -> bool:
    """Whether the hub may not be reached (``HF_HUB_OFFLINE`` or transformers' ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(key, "").strip().lower() in TRUE for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str:
    """The hub cache folder as the environment says now (``HF_HUB_CACHE``, ``HF_HOME``/hub, the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve(name: str):
    """``(source, from_pretrained keyword arguments)`` for a local folder or a hub id."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model {name!r} is a file; give a model folder (with config.json), a hub id or one "
                             f"of the built-in names {', '.join(BUILTIN_MODELS)}")
        _check_local_config(path)
        return str(path), {}
    if name.startswith((".", "/", "~")):
        raise ValueError(f"no model folder at {name!r}: it does not exist")
    if not HUB_ID.match(name):
        raise ValueError(f"model {name!r} is neither a local folder nor a hub id (owner/name or name); the "
                         f"built-in names are {', '.join(BUILTIN_MODELS)}")
    cache = hub_cache_dir()
    if _in_hub_cache(name, cache):
        return name, {"cache_dir": cache, "local_files_only": True}
    if hub_offline():
        raise ValueError(not_available(name, cache))
    unreachable = _hub_problem(name)  # one quick question, instead of transformers' minute of retries
    if unreachable:
        raise ValueError(not_available(name, cache, unreachable))
    return name, {"cache_dir": cache}


def not_available(name: str, cache: str, why: str = "the hub is offline (HF_HUB_OFFLINE=1)") -> str:
    return (f"model {name!r} is not in the hub cache ({cache}) and {why}. Make it available: download it where "
            f"the hub can be reached (`hf download {name}`, or unset HF_HUB_OFFLINE), point HF_HUB_CACHE at a "
            f"cache that holds it, or pass a local folder saved with save_pretrained")


def _hub_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be downloaded now (the hub unreachable, no such model), or None."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        return None  # exists; from_pretrained says what access it needs
    except RepositoryNotFoundError:
        return "the hub has no such model (or it is private)"
    except Exception as error:  # connection refused, no DNS, a proxy: the hub cannot be reached from here
        return f"the hub cannot be reached ({type(error).__name__})"
    return None


def _in_hub_cache(name: str, cache: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache), str)


def load_pretrained(source: str, options: dict):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, **options)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = auto.from_pretrained(source, **options)
    except OSError as error:  # transformers raises OSError for a missing folder, id or file
        hint = "" if Path(source).exists() else f"; {not_available(source, options.get('cache_dir', hub_cache_dir()))}"
        raise ValueError(f"could not load a language model from {source!r}: {error}{hint}") from error
    except pickle.UnpicklingError as error:  # torch.load(weights_only=True) refused to run what a pickle holds
        raise ValueError(f"{source}: its weights are a pickle that holds more than tensors, which sss refuses to "
                         "unpickle (it could run code); save the model as safetensors") from error
    return model, tokenizer


def _check_local_config(path: Path) -> None:
    """A local folder's config.json must parse: transformers' own error does not name the file."""
    config = path / "config.json"
    if config.is_file():
        read_json(config)


def _ensure_pad_token(tokenizer) -> None:
    # Reuse an existing token so the model's vocabulary (and embedding matrix) stay unchanged;
    # padding is masked by position everywhere in sss, so the choice never leaks into a loss.
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                return
        raise ValueError("the tokenizer has no pad, EOS, UNK or BOS token to pad with")


