"""The only place that adapts megatron-core to a machine without CUDA.

megatron-core 0.16 runs on gloo with the local (non transformer-engine) spec, except for a handful of places
that hard-code CUDA. Each adaptation below names the megatron-core lines it covers; `apply_cpu_adaptations`
installs them all, once, and only when CUDA is absent. tests/distributed/test_cpu_adaptations.py checks for
every adaptation that the megatron-core code it covers still fails without it (so it is still needed) and
works with it.

Measured on megatron-core 0.16.1 (see shared/notes/megatron-core-on-cpu.md): without any single one of
these, a TP=2 x PP=2 training step fails on CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Adaptation:
    """One CPU adaptation of megatron-core.

    name: short id; covers: the megatron/core/... places it adapts; install: applies it and returns a
    function that undoes it (used by the tests to show the adaptation is still needed).
    """

    name: str
    covers: tuple[str, ...]
    install: Callable[[], Callable[[], None]]


# --------------------------------------------------------------------------------------------------------
# 1. RNG tracker: megatron forks a "CUDA" RNG state around attention and TP weight init, even at dropout 0.
# --------------------------------------------------------------------------------------------------------
def _install_cpu_rng_tracker() -> Callable[[], None]:
    from megatron.core.tensor_parallel import random as mrandom

    cls = mrandom.CudaRNGStatesTracker
    saved = (cls.add, cls.fork, mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    cls.add, cls.fork = add, fork
    mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state = get_state, set_state

    def undo():
        cls.add, cls.fork, mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state = saved

    return undo


# --------------------------------------------------------------------------------------------------------
# 2. torch.cuda.current_device(): megatron allocates buffers "on the current device".
# --------------------------------------------------------------------------------------------------------
def _install_current_device() -> Callable[[], None]:
    saved = torch.cuda.current_device

    def current_device():
        return torch.device("cpu")

    torch.cuda.current_device = current_device

    def undo():
        torch.cuda.current_device = saved

    return undo


# --------------------------------------------------------------------------------------------------------
# 3. device="cuda" literals and .cuda() calls.
# --------------------------------------------------------------------------------------------------------
_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
    "megatron.core.transformer.utils",
)
_FACTORIES = (
    "tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand",
    "randn",
    "randint",
)


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _cpu_factory(fn):
    def factory(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
            if kwargs.get("pin_memory"):
                kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    return factory


class _TorchWithCpuFactories(types.ModuleType):
    """`torch` as seen by the modules above: tensor factories map device "cuda" to the CPU."""

    def __init__(self):
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _install_cuda_literals() -> Callable[[], None]:
    shim = _TorchWithCpuFactories()
    modules = [importlib.import_module(m) for m in _LITERAL_MODULES]
    saved_torch = [m.torch for m in modules]
    saved_cuda = torch.Tensor.cuda
    for m in modules:
        m.torch = shim

    def cuda(self, *args, **kwargs):
        return self

    torch.Tensor.cuda = cuda

    def undo():
        for m, t in zip(modules, saved_torch):
            m.torch = t
        torch.Tensor.cuda = saved_cuda

    return undo


# --------------------------------------------------------------------------------------------------------
# 4. tensor.type() == 'torch.cuda.FloatTensor' string checks in the optimizers.
# --------------------------------------------------------------------------------------------------------
_CPU_TO_CUDA_TYPE = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _install_type_strings() -> Callable[[], None]:
    saved = torch.Tensor.type

    def tensor_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = saved(self)
            return _CPU_TO_CUDA_TYPE.get(name, name)
        return saved(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = tensor_type

    def undo():
        torch.Tensor.type = saved

    return undo


# --------------------------------------------------------------------------------------------------------
# 5. torch.cuda.synchronize() after pipeline send / recv. The config flag batch_p2p_sync=False removes the
#    one at ~398, but the shape exchange that variable_seq_lengths needs (~242) synchronises
#    unconditionally; on CPU there is no device work to wait for, so a no-op covers both.
# --------------------------------------------------------------------------------------------------------
def _install_synchronize() -> Callable[[], None]:
    saved = torch.cuda.synchronize

    def synchronize(device=None):
        return None

    torch.cuda.synchronize = synchronize

    def undo():
        torch.cuda.synchronize = saved

    return undo


ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        "rng_tracker",
        (
            "tensor_parallel/random.py: CudaRNGStatesTracker.add (~235) and .fork",
            "tensor_parallel/random.py: _get_cuda_rng_state / _set_cuda_rng_state",
        ),
        _install_cpu_rng_tracker,
    ),
    Adaptation(
        "current_device",
        (
            "models/common/embeddings/rotary_pos_embedding.py ~162 (rope), ~297 (mrope)",
            "utils.py ~631 (GlobalMemoryBuffer)",
            "distributed/param_and_grad_buffer.py ~800/806",
            "tensor_parallel/layers.py ~552, tensor_parallel/mappings.py ~91/141/181 (SP)",
            "pipeline_parallel/p2p_communication.py ~313/321",
        ),
        _install_current_device,
    ),
    Adaptation(
        "cuda_literals",
        (
            "pipeline_parallel/schedules.py ~596/983/2138",
            "optimizer/optimizer.py ~473/481/485/907, optimizer/clip_grads.py ~90/103/115/174/207",
            "utils.py ~1207, transformer/utils.py ~35/40 (causal masks)",
            ".cuda() in optimizer/optimizer.py ~375/380, optimizer/distrib_optimizer.py ~1089",
        ),
        _install_cuda_literals,
    ),
    Adaptation(
        "type_strings",
        (
            "optimizer/clip_grads.py ~167",
            "optimizer/optimizer.py ~671/690",
            "optimizer/distrib_optimizer.py ~361/420/582",
        ),
        _install_type_strings,
    ),
    Adaptation(
        "synchronize",
        (
            "pipeline_parallel/p2p_communication.py ~242 (shape exchange, variable_seq_lengths)",
            "pipeline_parallel/p2p_communication.py ~398 (after batched p2p)",
        ),
        _install_synchronize,
    ),
)

_undo: dict[str, Callable[[], None]] = {}


def cuda_absent() -> bool:
    """True when this process has no usable CUDA device (the only CPU-vs-GPU question asked)."""
    return not torch.cuda.is_available()


def apply_cpu_adaptations() -> list[str]:
    """Install every adaptation once when CUDA is absent; returns the names installed now."""
    if not cuda_absent():
        return []
    installed = []
    for a in ADAPTATIONS:
        if a.name not in _undo:
            _undo[a.name] = a.install()
            installed.append(a.name)
    return installed


def active_adaptations() -> list[str]:
    """Names of the adaptations installed in this process."""
    return list(_undo)


@contextlib.contextmanager
def without(name: str) -> Iterator[None]:
    """Temporarily remove one installed adaptation (for the tests that show it is still needed)."""
    by_name = {a.name: a for a in ADAPTATIONS}
    if name not in _undo:
        raise KeyError(f"adaptation {name!r} is not installed (installed: {sorted(_undo)})")
    _undo.pop(name)()
    try:
        yield
    finally:
        _undo[name] = by_name[name].install()


def device() -> torch.device:
    """The device this process computes on: the current CUDA device, or the CPU."""
    return torch.device("cpu") if cuda_absent() else torch.device("cuda", torch.cuda.current_device())
