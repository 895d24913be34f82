"""vLLM's CUDA IPC weight transfer (rollout.weight_transfer=ipc) against vLLM's own code, on CPU.

What runs here: the session (init, start, finish) against a real vLLM 0.32 CPU server started with the IPC
backend, and our packed bucket payload decoded by vLLM's own IPCWeightTransferUpdateInfo and unpacked by its
own unpack_tensor. What cannot run on a CPU: the CUDA handles themselves (tools/gpu_check.py's ipc check
maps them in a second process on a GPU)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from mmr1_mega.rollout import vllm_payloads as P
from mmr1_mega.rollout.protocol import GenerationRequest
from tests.engines.conftest import engine_python, make_engine, make_server

pytestmark = pytest.mark.engine

VLLM_SIDE = r"""
import json, os, sys, torch
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # as our servers run
from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo
from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

saved = torch.load(sys.argv[1])
info = IPCWeightTransferUpdateInfo(**saved["payload"]["update_info"])
dtypes = [getattr(torch, d) for d in info.dtype_names]
flat = saved["flat"][: sum(info.tensor_sizes)]
out = {name: t.clone() for name, t in unpack_tensor(flat, info.names, info.shapes, dtypes, info.tensor_sizes)}
torch.save({"tensors": out, "handles": info.ipc_handles}, sys.argv[2])
"""


def test_vllms_own_code_decodes_and_unpacks_our_packed_bucket(tmp_path):
    python = engine_python("vllm")
    g = torch.Generator().manual_seed(0)
    bucket = [
        (
            "model.language_model.layers.0.self_attn.q_proj.weight",
            torch.randn(48, 32, generator=g).bfloat16(),
        ),
        ("model.language_model.layers.0.self_attn.q_proj.bias", torch.randn(48, generator=g)),
        ("model.visual.blocks.0.norm1.weight", torch.randn(7, generator=g).half()),
        ("lm_head.weight", torch.randn(5, 3, generator=g).t()),  # not contiguous
        ("model.language_model.norm.scale", torch.tensor(1.5)),  # 0-dim
        ("position_ids", torch.arange(11)),
    ]
    flat, meta = P.pack_bucket(bucket)
    assert flat.dtype == torch.uint8 and flat.numel() == sum(t.numel() * t.element_size() for _, t in bucket)
    # stand-in handles: on a GPU each value is torch's reduce_tensor args for that GPU's copy of the buffer
    handles = {"GPU-aaaa": (0, 1, b"\x01" * 64, 0, 16, 0, 3, "ref", 0, b"ev", False), "GPU-bbbb": (1, 2)}
    payload = P.ipc_update_payload(meta, handles)
    json.dumps(payload)  # travels as JSON
    # a buffer longer than its content (a reused, larger buffer): the consumer takes the first bytes
    padded = torch.cat([flat, torch.full((37,), 255, dtype=torch.uint8)])
    torch.save({"payload": payload, "flat": padded}, tmp_path / "in.pt")
    script = tmp_path / "vllm_side.py"
    script.write_text(VLLM_SIDE)
    subprocess.run(
        [python, str(script), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], check=True, timeout=300
    )
    back = torch.load(tmp_path / "out.pt")
    assert back["handles"] == handles
    assert sorted(back["tensors"]) == sorted(n for n, _ in bucket)
    for name, t in bucket:
        got = back["tensors"][name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got, t), name


def test_the_ipc_session_runs_on_a_real_server(engine_model, tmp_path):
    """A real server started with vLLM's IPC backend takes our session (init, start, finish) and serves the
    same model afterwards; a CPU cannot carry the buckets themselves."""
    server = make_server("vllm", engine_model, tmp_path, weight_transfer="ipc")
    assert "--weight-transfer-config" in server.command()
    engine = make_engine("vllm", [server]).launch()
    try:
        assert engine.weight_transfer == "ipc"
        req = GenerationRequest(prompt_ids=[5, 9, 17, 33, 2], max_new_tokens=6, temperature=0.0)
        before = engine.generate([req])[0][0].token_ids
        engine.begin_update()
        engine.end_update()
        assert engine.generate([req])[0][0].token_ids == before
        log = open(server.log_path).read()
        for path in ("/init_weight_transfer_engine", "/start_weight_update", "/finish_weight_update"):
            assert f'POST {path} HTTP/1.1" 200' in log, path
    finally:
        engine.shutdown()
