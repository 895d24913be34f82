"""The vLLM engine's weight-transfer choice and its servers' launch settings (no server, no GPU: the real
server's side is tests/engines/test_vllm_ipc.py, the CUDA side the device check's ipc check)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.config import ConfigError, RolloutConfig
from mmr1_mega.rollout import vllm_payloads as P
from mmr1_mega.rollout.protocol import EngineError
from mmr1_mega.rollout.vllm import VLLMEngine, VLLMServer, resolve_weight_transfer


@pytest.mark.parametrize(
    "asked, device, colocated, got",
    [
        ("auto", "cuda", True, "ipc"),
        ("auto", "cuda", False, "reload"),
        ("auto", "cpu", True, "reload"),
        ("reload", "cuda", True, "reload"),
        ("ipc", "cuda", True, "ipc"),
    ],
)
def test_auto_takes_ipc_exactly_where_it_can_run(asked, device, colocated, got):
    assert resolve_weight_transfer(asked, device, colocated) == got


@pytest.mark.parametrize("device, colocated", [("cpu", True), ("cuda", False)])
def test_ipc_where_it_cannot_run_is_refused_with_the_reason(device, colocated):
    with pytest.raises(EngineError, match="colocated GPU servers"):
        resolve_weight_transfer("ipc", device, colocated)
    with pytest.raises(EngineError, match="one of"):
        resolve_weight_transfer("nccl", device, colocated)


def test_the_config_refuses_ipc_without_colocation_and_unknown_transfers():
    with pytest.raises(ConfigError, match="colocate=true"):
        RolloutConfig(engine="vllm", weight_transfer="ipc", colocate=False, engine_gpus=[1]).validate()
    with pytest.raises(ConfigError, match="auto, reload or ipc"):
        RolloutConfig(engine="vllm", weight_transfer="cuda-ipc").validate()


def test_an_ipc_server_starts_vllms_ipc_backend_and_allows_its_pickled_handles(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    ipc = VLLMServer("/m", port=1, tp_size=2, base_gpu_id=1, weight_transfer="ipc")
    argv = ipc.command()
    assert argv[argv.index("--weight-transfer-config") + 1] == '{"backend": "ipc"}'
    env = ipc.launch_env()
    assert env["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"
    # base_gpu_id counts this process's visible GPUs: the server gets the same physical ones
    assert env["CUDA_VISIBLE_DEVICES"] == "5,6"
    reload = VLLMServer("/m", port=1, base_gpu_id=3)
    assert "--weight-transfer-config" not in reload.command()
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in reload.launch_env()
    with pytest.raises(EngineError, match="sees 4 GPU"):
        VLLMServer("/m", port=1, tp_size=2, base_gpu_id=3).launch_env()


def test_an_engine_takes_one_transfer_and_sends_nothing_outside_a_session():
    with pytest.raises(EngineError, match="different weight transfers"):
        VLLMEngine(
            [VLLMServer("/m", port=1), VLLMServer("/m", port=2, weight_transfer="ipc")], image_token_id=0
        )
    engine = VLLMEngine([VLLMServer("/m", port=1, weight_transfer="ipc")], image_token_id=0)
    with pytest.raises(EngineError, match="outside begin_update"):
        engine.update_weights([("w", torch.ones(2))])
    with pytest.raises(EngineError, match="without begin_update"):
        engine.end_update()


def test_packing_puts_wider_elements_first_so_every_piece_is_aligned():
    bucket = [
        ("h", torch.ones(3, dtype=torch.float16)),
        ("f", torch.ones(5)),
        ("l", torch.arange(2)),
        ("b", torch.ones(1, dtype=torch.bool)),
    ]
    flat, meta = P.pack_bucket(bucket)
    assert meta["names"] == ["l", "f", "h", "b"]
    offsets = [sum(meta["tensor_sizes"][:i]) for i in range(len(meta["names"]))]
    sizes = {"int64": 8, "float32": 4, "float16": 2, "bool": 1}
    assert all(o % sizes[d] == 0 for o, d in zip(offsets, meta["dtype_names"]))
    assert flat.numel() == sum(meta["tensor_sizes"]) == 16 + 20 + 6 + 1
    with pytest.raises(ValueError, match="one device"):
        P.pack_bucket([("a", torch.ones(1)), ("b", torch.ones(1, device="meta"))])
