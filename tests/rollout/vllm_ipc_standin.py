"""STAND-IN for a vLLM 0.32 server's weight-transfer endpoints with the CUDA IPC backend, packed mode — for
the device check (tools/gpu_check.py, check "ipc") only: the device image has no vLLM and its CUDA wheel is
far over what a call may carry. Everything else in that check is our own code (VLLMEngine's IPC path).

It enforces what vLLM's server does (vllm/entrypoints/rl/online/api_router.py, gpu_worker.py,
weight_transfer/ipc_engine.py and packed_tensor.py): the session order (init, start, update..., finish;
"start_weight_update must be called before update_weights"), the payload decoded by its dataclass' rules
(ipc_handles_pickled needs VLLM_ALLOW_INSECURE_SERIALIZATION=1), the handle looked up by this GPU's UUID,
rebuilt with torch's rebuild_cuda_tensor on this process's device (argument 6), one mapping kept per buffer
export, the buffer cut to the content, split by byte sizes, viewed as dtype and shape, and cloned before the
answer. What it received is listed at GET /received (name -> dtype, shape, sha256 of the bytes).

    CUDA_VISIBLE_DEVICES=0 python tests/rollout/vllm_ipc_standin.py PORT
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(
        t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    ).hexdigest()


class State:
    packed: bool | None = None
    active = False
    mapping: tuple | None = None  # (rebuild args, tensor): vLLM's PackedBufferImporter
    received: dict = {}
    updates = 0


def update(info: dict) -> None:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if not State.active:
        raise RuntimeError("start_weight_update must be called before update_weights.")
    if "ipc_handles_pickled" in info:
        if os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") != "1":
            raise ValueError(
                "Refusing to deserialize `ipc_handles_pickled` without VLLM_ALLOW_INSECURE_SERIALIZATION=1"
            )
        handles = pickle.loads(base64.b64decode(info["ipc_handles_pickled"]))
    else:
        handles = info["ipc_handles"]
    names, shapes, dtype_names, sizes = (
        info["names"],
        info["shapes"],
        info["dtype_names"],
        info["tensor_sizes"],
    )
    if not (len(names) == len(shapes) == len(dtype_names) == len(sizes)):
        raise ValueError("names, shapes, dtype_names and tensor_sizes differ in length")
    if not State.packed or not isinstance(handles, dict):
        raise ValueError("the stand-in takes packed transfers (one handle dict per chunk) only")
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    if uuid not in handles:
        raise ValueError(f"IPC handle not found for GPU UUID {uuid}. Available UUIDs: {list(handles)}")
    args = list(handles[uuid])
    args[6] = 0
    if State.mapping is None or State.mapping[0] != tuple(args):
        State.mapping = (tuple(args), rebuild_cuda_tensor(*args))
    packed = State.mapping[1][: sum(sizes)]
    for name, shape, dn, piece in zip(names, shapes, dtype_names, packed.split(sizes)):
        t = piece.contiguous().view(getattr(torch, dn)).view(shape).clone()
        State.received[name] = {"dtype": dn, "shape": list(t.shape), "sha256": digest(t)}
    State.updates += 1


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def _answer(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self._answer(200, {})
        if self.path == "/received":
            return self._answer(200, {"updates": State.updates, "tensors": State.received})
        return self._answer(404, {"detail": "Not Found"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        path = self.path.split("?")[0]
        try:
            if path == "/init_weight_transfer_engine":
                State.packed = bool(body["init_info"].get("packed", False))
            elif path == "/start_weight_update":
                if State.packed is None:
                    raise RuntimeError("weight transfer engine not initialized")
                State.active, State.received, State.updates = True, {}, 0
            elif path == "/update_weights":
                update(body["update_info"])
            elif path == "/finish_weight_update":
                if not State.active:
                    raise RuntimeError("finish_weight_update called without a matching start_weight_update.")
                State.active, State.mapping = False, None
            elif path not in (
                "/pause",
                "/resume",
                "/reset_prefix_cache",
                "/reset_encoder_cache",
                "/reset_mm_cache",
            ):
                return self._answer(404, {"detail": "Not Found"})
        except Exception as e:  # noqa: BLE001 - as vLLM: the error in the answer
            return self._answer(500, {"error": f"{type(e).__name__}: {e}"})
        return self._answer(200, {"message": "ok"})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
