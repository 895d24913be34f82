"""Fixtures of the real-engine tests: real vLLM 0.32 and SGLang 0.5.23 servers, each started from its own
environment (scripts/engine_env.sh), serving a tiny random Qwen2.5-VL with the demo's processor.

The environments are found at .venv-vllm / .venv-sglang (or MMR1_VLLM_PYTHON / MMR1_SGLANG_PYTHON). Without
one, its tests are skipped, saying how to build it; with MMR1_REQUIRE_ENGINES=1 (CI) they fail instead.

The model has head_dim 32 (vLLM's CPU attention serves 32, 64, 80, ...; the demo's 24 is not among them).
SGLang runs with the sgl_kernel stand-in of tests/engines/standin on its PYTHONPATH: the only piece of these
runs that is not the real engine (see its docstring).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from mmr1_mega.distributed.init import free_port

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("standin")
ENGINES = ("vllm", "sglang")
MODEL = dict(
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=256,
    tie_word_embeddings=False,
    vision_depth=2,
    vision_hidden=64,
)
MIN_PIXELS, MAX_PIXELS = 3136, 12544  # 56 x 56 .. 112 x 112


def engine_python(kind: str) -> str:
    """The python of the engine's environment; skips (fails under MMR1_REQUIRE_ENGINES=1) without one."""
    path = os.environ.get(f"MMR1_{kind.upper()}_PYTHON") or str(ROOT / f".venv-{kind}" / "bin" / "python")
    if not os.access(path, os.X_OK):
        msg = f"no {kind} environment at {path}: build it with `bash scripts/engine_env.sh {kind}`"
        if os.environ.get("MMR1_REQUIRE_ENGINES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def save_engine_model(out_dir: Path, seed: int, family: str = "qwen2_5_vl", tie: bool = False) -> None:
    """The demo's processor and a random tiny model of the family (sizes MODEL; tie: lm_head tied to the
    embeddings) in out_dir."""
    from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT
    from mmr1_mega.data.synthetic import synthetic_corpus
    from mmr1_mega.data.tokenizer import build_processor
    from mmr1_mega.models.presets import PATCH_SIZE
    from mmr1_mega.trainer.demo import save_tiny_vl_model

    processor = build_processor(
        str(out_dir),
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=PATCH_SIZE[family],
        corpus=synthetic_corpus() + [DEFAULT_SYSTEM_PROMPT],
        vocab_size=320,
    )
    # Qwen3-VL: head_dim 2 x hidden / heads (tiny_hf_config): 8 heads keep it at vLLM's CPU size 32
    sizes = (
        MODEL
        | ({"family": family, "num_heads": 8} if family == "qwen3_vl" else {})
        | {"tie_word_embeddings": tie}
    )
    model = save_tiny_vl_model(out_dir, processor.tokenizer, sizes, seed)
    with torch.no_grad():  # transformers leaves biases at zero and norms at one: make every weight random
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def engine_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine-model")
    save_engine_model(d, seed=0)
    return d


def make_server(kind: str, model_dir, log_dir: Path, **kw):
    """A (not yet started) server of engine `kind` for model_dir, from the engine's own environment."""
    python = engine_python(kind)
    port = free_port()
    log = str(log_dir / f"{kind}-{port}.log")
    if kind == "vllm":
        from mmr1_mega.rollout.vllm import VLLMServer

        return VLLMServer(
            str(model_dir),
            port=port,
            device="cpu",
            dtype="float32",
            colocated=False,
            seed=0,
            max_model_len=1024,
            launcher=[python, "-m", "vllm.entrypoints.openai.api_server"],
            log_path=log,
            **kw,
        )
    from mmr1_mega.rollout.sglang_server import SGLangServer

    return SGLangServer(
        str(model_dir),
        port=port,
        dtype="float32",
        colocated=False,
        mem_fraction=0.3,
        seed=0,
        device="cpu",  # the adapter adds SGLang's CPU flags and environment
        launcher=[python, "-m", "sglang.launch_server"],
        extra_args=["--max-total-tokens", "4096"],
        env={"PYTHONPATH": str(STANDIN)},  # the sgl_kernel stand-in
        log_path=log,
        **kw,
    )


def make_engine(kind: str, servers, **kw):
    if kind == "vllm":
        from mmr1_mega.rollout.vllm import VLLMEngine

        return VLLMEngine(servers, colocated=False, timeout_s=300, request_timeout_s=300, **kw)
    from mmr1_mega.rollout.sglang import SGLangEngine

    return SGLangEngine(servers, colocated=True, timeout_s=300, request_timeout_s=300, **kw)


@pytest.fixture(scope="module", params=ENGINES)
def served(request, engine_model, tmp_path_factory):
    """(kind, engine client, its model folder): one real server per engine, for the module's tests.
    The folder is a copy of engine_model, so weight updates in one module never leak into another."""
    kind = request.param
    d = tmp_path_factory.mktemp(f"{kind}-model")
    shutil.copytree(engine_model, d, dirs_exist_ok=True)
    server = make_server(kind, d, d)
    engine = make_engine(kind, [server]).launch()
    yield kind, engine, d
    engine.shutdown()
