"""Peak FLOP/s of a device, the denominator of MFU.

On NVIDIA GPUs: the dense tensor-core peak of the datasheet, per dtype. NVIDIA's datasheets list the
figures "with sparsity" (2:4 structured sparsity), twice the dense ones; MFU is taken against the dense
peak (a dense model cannot use sparse tensor cores). The table holds only GPUs whose figures are known
here: any other GPU (including the NVL variants, which run at lower clocks and power than the SXM parts)
is reported as unknown, and the caller passes its peak explicitly.

On CPU there is no datasheet figure to trust (the clock, the vector units and the BLAS decide): the peak
is measured, as the best rate of a square matmul with the threads the benchmark uses, and named so.
"""

from __future__ import annotations

import math
import re
import time

import torch

# Dense peak tensor-core TFLOP/s per GPU (no sparsity), by dtype. bf16 and fp16 accumulate in fp32.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (table "H100 SXM5"), H100 datasheet: BF16 / FP16
    # 1,979 TFLOPS with sparsity, 989.4 dense; FP8 3,958 with sparsity; TF32 989 with sparsity
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "tf32": 494.7},
    # same sources, H100 PCIe: BF16 / FP16 1,513 TFLOPS with sparsity (756 dense); FP8 3,026; TF32 756
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp8": 1513.0, "tf32": 378.0},
    # NVIDIA H200 datasheet (H200 SXM): BF16 / FP16 1,979 TFLOPS, FP8 3,958, TF32 989 (with sparsity): the
    # H100 SXM's tensor cores and clocks with more and faster memory
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "tf32": 494.7},
    # NVIDIA HGX B200 datasheet (8 GPUs): FP16 / BF16 36 PFLOPS, FP8 72, TF32 18 (with sparsity), i.e. per
    # GPU 2.25 PFLOPS bf16 dense, 4.5 fp8 dense, 1.125 tf32 dense
    "B200": {"bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0, "tf32": 1125.0},
}

# torch.cuda.get_device_name() -> table entry, first match wins; e.g. "NVIDIA H100 80GB HBM3" is the SXM5
# part, "NVIDIA H100 PCIe" the PCIe one. NVL parts and GH200 ("GH200" has no word boundary before "H200")
# match nothing.
_NAME_PATTERNS = [
    (re.compile(r"\bNVL\b"), None),
    (re.compile(r"\bH100\b.*\bPCIE\b"), "H100 PCIe"),
    (re.compile(r"\bH100\b.*\b(SXM\d?|HBM3E?)\b"), "H100 SXM"),
    (re.compile(r"\bH200\b"), "H200"),
    (re.compile(r"\bB200\b"), "B200"),
]

_DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp8": "fp8",
    "float8": "fp8",
    "tf32": "tf32",
}


def gpu_entry(device_name: str) -> str | None:
    """The PEAK_TFLOPS entry of a GPU named as torch.cuda.get_device_name() names it, None if not there."""
    name = device_name.upper()
    for pattern, entry in _NAME_PATTERNS:
        if pattern.search(name):
            return entry
    return None


def device_peak(dtype: str, device_name: str | None = None) -> tuple[float | None, str]:
    """Peak dense FLOP/s of one device for matmuls in `dtype` ('bf16', 'fp16', 'fp8', 'tf32' or their torch
    names), and where the figure comes from. device_name: as torch.cuda.get_device_name() returns it
    (default: this process's CUDA device). (None, why) when the table has no figure: no CUDA device, an
    unknown GPU or a dtype without a tensor-core figure (fp32)."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None, "no CUDA device: measure the CPU (measure_cpu_matmul_peak) or pass --peak-tflops"
        device_name = torch.cuda.get_device_name()
    entry = gpu_entry(device_name)
    if entry is None:
        return None, f"unknown GPU {device_name}: pass --peak-tflops"
    key = _DTYPE_ALIASES.get(str(dtype).lower().removeprefix("torch."))
    if key is None:
        return None, f"no datasheet peak for {dtype} matmuls on {device_name}: pass --peak-tflops"
    tflops = PEAK_TFLOPS[entry][key]
    return tflops * 1e12, f"datasheet: {entry} dense {key} {tflops:g} TFLOP/s (device {device_name})"


def measure_cpu_matmul_peak(
    threads: int, dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 1.0
) -> float:
    """The matmul FLOP/s this CPU reaches with `threads` torch threads: the best of repeated timings of
    size x size matmuls in `dtype` (2 size^3 FLOPs each) over about `seconds`, after a warm-up. Each timing
    runs enough matmuls to last about a tenth of `seconds`, so that the timer's resolution does not
    matter. torch's thread count is restored afterwards."""
    flops = 2 * size**3
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g).to(dtype)
        b = torch.randn(size, size, generator=g).to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: the BLAS's threads and buffers
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        one = max(time.perf_counter() - t0, 1e-9)
        per_timing = max(1, round(seconds / 10 / one))
        best, timings, start = 0.0, 0, time.perf_counter()
        while timings < 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            for _ in range(per_timing):
                torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - t0
            if elapsed > 0:
                best = max(best, per_timing * flops / elapsed)
            timings += 1
        if not (best > 0 and math.isfinite(best)):
            raise RuntimeError(f"could not time a {size} x {size} matmul (best rate {best})")
        return best
    finally:
        torch.set_num_threads(previous)
