"""Fingerprints of base weights: which weights a delta or checkpoint was made for, so that a model
of the same shapes with other weights can be refused."""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["FINGERPRINT_SAMPLE", "check_fingerprint", "weights_fingerprint"]

FINGERPRINT_SAMPLE = 4096  # elements hashed per tensor when no names are given (see weights_fingerprint)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Through uint8 so that dtypes numpy lacks (bfloat16) hash by their exact bit patterns too.
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(weights: Union[nn.Module, Mapping[str, torch.Tensor]],
                        names: Optional[Iterable[str]] = None) -> str:
    """A short stable hash (16 hex digits) of a model's weights, to refuse other base weights.

    With ``names``: the exact bytes, dtype and shape of just those tensors (e.g. the ones a delta
    touches), so a change of one ulp in one element changes the fingerprint. Hashing every
    tensor's bytes in full would cost ~1 s for a 135M model, so without ``names`` every tensor
    contributes its name, dtype, shape and a strided sample of ~``FINGERPRINT_SAMPLE`` elements:
    any two independently trained or initialised models differ, but a change confined to
    unsampled elements goes unseen, which is why callers that edit weights should name them.
    A model gives its ``state_dict()`` (parameters and buffers); device never matters.
    """
    tensors = weights.state_dict() if isinstance(weights, nn.Module) else dict(weights)
    if names is None:
        selected, sample = sorted(tensors), True
    else:
        selected, sample = sorted(set(names)), False
        missing = [name for name in selected if name not in tensors]
        if missing:
            raise ValueError(f"weights_fingerprint: no tensor named {', '.join(missing[:5])}")
    digest = hashlib.sha256()
    for name in selected:
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if sample and tensor.numel() > FINGERPRINT_SAMPLE:
            tensor = tensor.detach().reshape(-1)[::tensor.numel() // FINGERPRINT_SAMPLE]
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def check_fingerprint(saved: Optional[str], current: str, what: str) -> None:
    """Refuse ``what`` (e.g. "the saved edit /x/edit.safetensors") made for other base weights."""
    if saved is not None and saved != current:
        raise ValueError(f"{what} was made for base weights with fingerprint {saved}, but this model's are "
                         f"{current}: load it onto the model it was made from")
