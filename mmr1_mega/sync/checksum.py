"""Exact per-tensor checksums, for verifying that an engine holds the actor's weights bit for bit."""

from __future__ import annotations

import hashlib

import torch


def tensor_checksum(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's dtype, shape and raw bytes (bitwise: -0.0 != 0.0, NaN payloads count).

    Takes any tensor (any device; copied to the CPU). Returns a hex digest.
    """
    t = tensor.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    # uint8 view: numpy has no bfloat16, and bytes are what "bitwise" means
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
