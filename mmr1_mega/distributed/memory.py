"""Peak host memory of this process per phase (loading, running), sampled in a background thread.

Host RSS is what limits a CPU run and what the OOM killer sees; on GPU the device's own peak
(`torch.cuda.max_memory_allocated`) is reported beside it where CUDA is present.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psutil
import torch

GB = 1e9


class PhaseMemory:
    """Samples this process's resident set every `interval_s` while a phase runs.

    with mem.phase("load"): ...   ->   mem.report()["load"] = {"peak_gb", "end_gb", "peak_over_start_gb",
    "end_over_start_gb", "peak_anon_gb"} (+ "cuda_peak_gb" with CUDA). "over start" subtracts the RSS when
    the monitor was made, so a forked rank does not count the pages it shares with its parent at fork time.
    "anon" is the resident set less its file-backed pages (RSS - shared on Linux): memory-mapped checkpoint
    files count in RSS while they are read, but they are page cache the kernel can reclaim.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self.start_rss = self._proc.memory_info().rss
        self._phases: dict[str, dict[str, float]] = {}

    def _sample(self) -> tuple[int, int]:
        info = self._proc.memory_info()
        return info.rss, info.rss - getattr(info, "shared", 0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        peak = list(self._sample())
        stop = threading.Event()

        def sample():
            while not stop.wait(self.interval_s):
                rss, anon = self._sample()
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)

        thread = threading.Thread(target=sample, daemon=True)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            end, end_anon = self._sample()
            peak[0], peak[1] = max(peak[0], end), max(peak[1], end_anon)
            stats = {
                "peak_gb": peak[0] / GB,
                "end_gb": end / GB,
                "peak_over_start_gb": (peak[0] - self.start_rss) / GB,
                "end_over_start_gb": (end - self.start_rss) / GB,
                "peak_anon_gb": peak[1] / GB,
            }
            if cuda:
                stats["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / GB
            self._phases[name] = stats

    def report(self) -> dict[str, dict[str, float]]:
        """Per phase name, its memory figures (GB = 1e9 bytes)."""
        return {k: dict(v) for k, v in self._phases.items()}


def peak_memory_gb() -> float:
    """This process's peak memory so far, GB: the accelerator's peak allocation with CUDA, else the peak
    resident set (getrusage; a forked rank's count starts from what it shared with its parent)."""
    from mmr1_mega.distributed.cpu import cuda_absent

    if not cuda_absent():
        return torch.cuda.max_memory_allocated() / GB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux
