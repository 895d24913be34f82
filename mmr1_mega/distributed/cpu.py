"""The only place that adapts megatron-core to a machine without CUDA.

megatron-core (0.16.1 to 0.19.x) runs on gloo with the local (non transformer-engine) spec, except for a
handful of places that hard-code CUDA. Each adaptation below cites the megatron-core lines it covers, per
megatron-core version it was checked against, and the version whose code first needed it;
`apply_cpu_adaptations` installs the ones the installed megatron-core needs, once, and only when CUDA is
absent. tests/distributed/test_cpu_adaptations.py checks, on the installed version, that every cited line
still holds the cited text, that each installed adaptation's probe (megatron's own code) fails without it
(so it is still needed) and passes with it, and that the probe of an adaptation this version does not
need passes without it.

Measured on megatron-core 0.16.1 and 0.19.2 (see shared/notes/megatron-core-on-cpu.md): without any single
one of these, a TP=2 x PP=2 training step fails on CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Cite:
    """A place in megatron/core/ that an adaptation covers: the file, text that stands on the cited lines,
    and those lines per megatron-core version (checked by the tests on the installed version)."""

    path: str
    text: str
    lines: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __str__(self) -> str:
        where = "; ".join(f"{v}: {', '.join(map(str, ls))}" for v, ls in self.lines.items())
        return f"{self.path} `{self.text}` ({where})"


@dataclass(frozen=True)
class Adaptation:
    """One CPU adaptation of megatron-core.

    name: short id; covers: the megatron/core/... places it adapts; install: applies it and returns a
    function that undoes it (used by the tests to show the adaptation is still needed); since: the first
    megatron-core version whose code needs it.
    """

    name: str
    covers: tuple[Cite, ...]
    install: Callable[[], Callable[[], None]]
    since: str = "0.16.1"


def megatron_version() -> str:
    """The installed megatron-core release (e.g. '0.19.2'), without the '+<git hash>' that megatron-core
    appends when its package directory sits inside some git checkout (a virtualenv inside a repository)."""
    import megatron.core
    from packaging.version import Version

    return Version(megatron.core.__version__).public


def needed_here(adaptation: Adaptation) -> bool:
    """Whether the installed megatron-core has the code this adaptation covers."""
    from packaging.version import Version

    return Version(megatron_version()) >= Version(adaptation.since)


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
def _replace_in_torch_cuda(name: str, replacement: Callable) -> Callable[[], None]:
    """Put `replacement` in place of torch.cuda.<name>; returns the function that puts the original back."""
    saved = getattr(torch.cuda, name)
    setattr(torch.cuda, name, replacement)

    def undo():
        setattr(torch.cuda, name, saved)

    return undo


def _install_current_device() -> Callable[[], None]:
    return _replace_in_torch_cuda("current_device", lambda: torch.device("cpu"))


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
#    one after batched p2p (0.16.1: line 398), but the shape exchange that variable_seq_lengths needs
#    (0.16.1: line 242) synchronises
#    unconditionally; on CPU there is no device work to wait for, so a no-op covers both.
# --------------------------------------------------------------------------------------------------------
def _install_synchronize() -> Callable[[], None]:
    return _replace_in_torch_cuda("synchronize", lambda device=None: None)


# --------------------------------------------------------------------------------------------------------
# 6. torch.cuda.current_stream(): since 0.19.0 every gradient sync asks for the current CUDA stream (to wait
#    on CUDA-graph events); before, only several distributed-optimizer instances did. In a process without
#    CUDA there are no streams and no events, so a host stream whose waits are no-ops is exact.
# --------------------------------------------------------------------------------------------------------
class _HostStream:
    """The one "stream" of a process without CUDA: work is already ordered, so every wait is a no-op."""

    def wait_event(self, event) -> None:
        return None

    def wait_stream(self, stream) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record_event(self, event=None):
        return event


_HOST_STREAM = _HostStream()


def _install_current_stream() -> Callable[[], None]:
    return _replace_in_torch_cuda("current_stream", lambda device=None: _HOST_STREAM)


def _cite(path: str, text: str, v16: tuple[int, ...], v19: tuple[int, ...]) -> Cite:
    return Cite(path, text, {"0.16.1": v16, "0.19.2": v19})


_CUDA_DEVICE = "torch.cuda.current_device()"
ADAPTATIONS: tuple[Adaptation, ...] = (
    Adaptation(
        "rng_tracker",
        (
            _cite("tensor_parallel/random.py", "def add(self, name, seed)", (217,), (285,)),
            _cite("tensor_parallel/random.py", "def fork(self, name=", (243,), (311,)),
            _cite("tensor_parallel/random.py", "def _get_cuda_rng_state(", (41,), (104,)),
            _cite("tensor_parallel/random.py", "def _set_cuda_rng_state(", (72,), (135,)),
        ),
        _install_cpu_rng_tracker,
    ),
    Adaptation(
        "current_device",
        (
            _cite("models/common/embeddings/rotary_pos_embedding.py", _CUDA_DEVICE, (162, 297), (162, 305)),
            _cite("utils.py", _CUDA_DEVICE, (631,), (715,)),  # GlobalMemoryBuffer
            _cite("distributed/param_and_grad_buffer.py", _CUDA_DEVICE, (783, 800, 806), (1162, 1180, 1186)),
            _cite("tensor_parallel/layers.py", _CUDA_DEVICE, (552,), (647,)),
            _cite("tensor_parallel/mappings.py", _CUDA_DEVICE, (91, 141, 181), (95, 145, 185)),  # SP
            _cite("pipeline_parallel/p2p_communication.py", _CUDA_DEVICE, (313, 321), (334, 342)),
        ),
        _install_current_device,
    ),
    Adaptation(
        "cuda_literals",
        (
            _cite("pipeline_parallel/schedules.py", 'device="cuda"', (596, 983, 2138), (749, 1121, 2292)),
            _cite(
                "optimizer/optimizer.py", "device='cuda'", (473, 481, 485, 907), (315, 690, 698, 702, 1249)
            ),
            _cite("optimizer/optimizer.py", ".cuda()", (375, 380), (586, 591)),
            _cite(
                "optimizer/clip_grads.py", "device='cuda'", (90, 103, 115, 174, 207), (96, 108, 112, 180, 231)
            ),
            _cite("utils.py", 'device="cuda"', (1207,), (1332,)),
            _cite("transformer/utils.py", 'device="cuda"', (35, 40), (39, 44)),  # causal masks
            _cite("optimizer/distrib_optimizer.py", ".cuda()", (1089,), (1374,)),
        ),
        _install_cuda_literals,
    ),
    Adaptation(
        "type_strings",
        (
            _cite("optimizer/clip_grads.py", "'torch.cuda.FloatTensor'", (167,), (174,)),
            _cite("optimizer/optimizer.py", "'torch.cuda.HalfTensor'", (671,), (1009,)),
            _cite("optimizer/optimizer.py", "== 'torch.cuda.FloatTensor'", (690,), (1028,)),
            _cite("optimizer/distrib_optimizer.py", "'torch.cuda.HalfTensor'", (361, 582), (401, 758)),
            _cite("optimizer/distrib_optimizer.py", "== 'torch.cuda.FloatTensor'", (420,), (466,)),
        ),
        _install_type_strings,
    ),
    Adaptation(
        "synchronize",
        (
            # the first: the shape exchange of variable_seq_lengths; the second: after batched p2p
            _cite(
                "pipeline_parallel/p2p_communication.py", "torch.cuda.synchronize()", (242, 398), (263, 419)
            ),
        ),
        _install_synchronize,
    ),
    Adaptation(
        "current_stream",
        (
            Cite(
                "distributed/param_and_grad_buffer.py",
                "current_stream = torch.cuda.current_stream()",
                {"0.19.2": (632,)},
            ),
        ),
        _install_current_stream,
        since="0.19.0",
    ),
)

_undo: dict[str, Callable[[], None]] = {}


def cuda_absent() -> bool:
    """True when this process has no usable CUDA device (the only CPU-vs-GPU question asked)."""
    return not torch.cuda.is_available()


def apply_cpu_adaptations() -> list[str]:
    """Install, once, every adaptation the installed megatron-core needs when CUDA is absent; returns the
    names installed now."""
    if not cuda_absent():
        return []
    installed = []
    for a in ADAPTATIONS:
        if a.name not in _undo and needed_here(a):
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


def disable_dynamo_without_cuda() -> None:
    """Without CUDA, turn off torch.compile (TORCHDYNAMO_DISABLE=1, unless the user set it): megatron
    compiles a few fused helpers on their first call, seconds per process on a CPU for nothing. On a GPU
    the compiled fusions are wanted, and the variable would also reach the engine servers' environment."""
    import os

    if cuda_absent():
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


def device() -> torch.device:
    """The device this process computes on: the current CUDA device, or the CPU."""
    return torch.device("cpu") if cuda_absent() else torch.device("cuda", torch.cuda.current_device())
