"""Models: loading them (:mod:`.loading`, the built-in ones in :mod:`.builtin`), where each
architecture keeps what editors touch (:mod:`.layout`), attention kernels with a double backward
(:mod:`.attention`), and the checked dtype and device arguments (:mod:`.args`).

Nothing else in sss names a module path: editors ask :func:`layout_of` where blocks, MLP weights,
the final norm and the embeddings live.
"""
from .args import DTYPES, as_device, as_dtype, check_load_arguments
from .attention import second_order_attention
from .builtin import BUILTIN_MODELS, cache_dir, gpt2_tokenizer
from .layout import ARCHITECTURES, ModelLayout, backbone, is_conv1d, layout_of, mlp_in_paths, mlp_out_path, num_blocks
from .loading import load_model

__all__ = ["ARCHITECTURES", "BUILTIN_MODELS", "DTYPES", "ModelLayout", "as_device", "as_dtype", "backbone",
           "cache_dir", "check_load_arguments", "gpt2_tokenizer", "is_conv1d", "layout_of", "load_model",
           "mlp_in_paths", "mlp_out_path", "num_blocks", "second_order_attention"]
