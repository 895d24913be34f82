"""STAND-IN for SGLang's compiled `sgl_kernel` package — the one piece of the real-SGLang tests that is not
real. PyPI has no CPU build of sgl_kernel (its wheels hold sm90 / sm100 CUDA libraries only), and SGLang
0.5.23's CPU mode still imports it:

- `assign_req_to_token_pool_cpu` is called on every prefill and decode (srt/mem_cache/allocation.py): it is
  implemented here in torch, with the semantics of SGLang's own Triton kernel `assign_req_to_token_pool`
  in the same file (request i's new KV slots, out_cache_loc[sum of earlier lengths : + end_i - start_i],
  are written to req_to_token[req_pool_indices[i], start_i:end_i]);
- every other name — `from sgl_kernel import X` and the `torch.ops.sgl_kernel.<name>` ops SGLang's modules
  reference when they are imported (e.g. Qwen-VL's processor registration) — exists so imports succeed,
  and raises if called (torch ops are declared without arguments: any call is refused). On a CPU without AMX SGLang runs its torch-native paths and
  calls none of them; a test that reached one would fail loudly, not silently compute something else.

Put the folder holding this package first on the SGLang server's PYTHONPATH (tests/engines/conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__version__ = "0.0.0+mmr1-standin"


def assign_req_to_token_pool_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
):
    del pool_len  # req_to_token's row length; rows are indexed directly here
    offset = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        n = end - start
        req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(req_to_token.dtype)
        offset += n


def _missing(name: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not available: this is the CPU test stand-in (tests/engines/standin), "
            "which implements assign_req_to_token_pool_cpu only"
        )

    fn.__name__ = name
    return fn


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)


def _define_torch_ops() -> None:
    """torch.ops.sgl_kernel.<name> for every name SGLang's source references; declared with no arguments, so
    any call raises."""
    import importlib.util

    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(next(iter(spec.submodule_search_locations)))
    names = set()
    for f in root.rglob("*.py"):
        names.update(re.findall(r"torch\.ops\.sgl_kernel\.([A-Za-z0-9_]+)", f.read_text(errors="ignore")))
    lib = torch.library.Library("sgl_kernel", "FRAGMENT")  # noqa: TOR901
    for name in sorted(names):
        if hasattr(torch.ops.sgl_kernel, name) and name in dir(torch.ops.sgl_kernel):
            continue
        lib.define(f"{name}(...) -> ()")
        lib.impl(name, _missing(name), "CompositeExplicitAutograd")
    globals()["_lib"] = lib  # keep the registrations alive


_define_torch_ops()
