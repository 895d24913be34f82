"""Device peaks: the datasheet table looked up by the names torch.cuda.get_device_name() returns, and the
measured CPU matmul peak (checked against its own definition, not against a second timing: two timings on a
shared machine can disagree by any factor)."""

from __future__ import annotations

import math

import pytest
import torch

from mmr1_mega.perf import peak
from mmr1_mega.perf.peak import PEAK_TFLOPS, device_peak, gpu_entry, measure_cpu_matmul_peak


@pytest.mark.parametrize(
    "name, entry",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA H100 NVL", None),  # lower clocks than the SXM part: not in the table
        ("NVIDIA H200 NVL", None),
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_gpu_names(name, entry):
    assert gpu_entry(name) == entry


def test_table_lookup_dense_datasheet_figures():
    assert device_peak("bf16", "NVIDIA H200") == (
        989.4e12,
        "datasheet: H200 dense bf16 989.4 TFLOP/s (device NVIDIA H200)",
    )
    assert device_peak("bfloat16", "NVIDIA H100 80GB HBM3")[0] == 989.4e12
    assert device_peak("torch.float16", "NVIDIA H100 PCIe")[0] == 756e12
    assert device_peak("fp8", "NVIDIA B200")[0] == 4500e12
    assert device_peak("tf32", "NVIDIA B200")[0] == 1125e12
    # fp8 twice bf16, tf32 half, up to the datasheets' rounding to whole TFLOP/s (H100 PCIe: 756 and 1,513)
    for figures in PEAK_TFLOPS.values():
        assert figures["fp16"] == figures["bf16"]
        assert figures["fp8"] == pytest.approx(2 * figures["bf16"], rel=2e-3)
        assert figures["tf32"] == pytest.approx(figures["bf16"] / 2, rel=2e-3)


def test_unknown_gpu_dtype_and_no_cuda(monkeypatch):
    assert device_peak("bf16", "NVIDIA A100-SXM4-80GB") == (
        None,
        "unknown GPU NVIDIA A100-SXM4-80GB: pass --peak-tflops",
    )
    value, why = device_peak("fp32", "NVIDIA H200")
    assert value is None and "fp32" in why and "--peak-tflops" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    value, why = device_peak("bf16")
    assert value is None and "no CUDA device" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA B200")
    assert device_peak("bf16")[0] == 2250e12


def test_measured_cpu_peak_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    rate = measure_cpu_matmul_peak(1, size=64, seconds=0.05)
    assert rate > 0 and math.isfinite(rate)
    assert torch.get_num_threads() == before
    assert measure_cpu_matmul_peak(1, dtype=torch.bfloat16, size=32, seconds=0.02) > 0


def test_measured_cpu_peak_counts_2_n_cubed_flops_per_matmul(monkeypatch):
    """With a clock that advances 1 ms per reading every timing lasts 1 ms: the rate is then a whole
    number of size x size matmuls of 2 size^3 FLOPs per millisecond."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(peak.time, "perf_counter", lambda: next(ticks) * 1e-3)
    size = 16
    rate = measure_cpu_matmul_peak(1, size=size, seconds=0.05)
    matmuls = rate * 1e-3 / (2 * size**3)
    assert matmuls >= 1 and matmuls == pytest.approx(round(matmuls), abs=1e-9)
