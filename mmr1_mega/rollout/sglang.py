"""The SGLang engine: one or more SGLang servers (each `engine_tp` GPUs) behind a round-robin client or
an sglang-router URL, speaking SGLang's native HTTP API (pinned 0.5.23, see sglang_payloads.py).

Weights arrive either
- colocated (servers on the actor's GPUs): each bucket is flattened, serialized with torch's
  ForkingPickler (CUDA tensors travel as IPC handles, no copy) and posted to /update_weights_from_tensor;
  servers release / resume their memory around training;
- disaggregated (servers on their own GPUs): each pipeline stage's leader opens an NCCL group with the
  servers' TP workers (/init_weights_update_group) and broadcasts each bucket as one flat buffer
  announced by /update_weights_from_distributed.
Updates are bracketed by /pause_generation + /begin_weight_update and /end_weight_update + /flush_cache +
/continue_generation: SGLang 0.5.23 refuses tensor and distributed updates outside a begin ... end session
(it restores in-place-packed weights at begin and re-packs them at end). A server found
dead is restarted and marked stale: it gets no generation until the next full weight update reaches it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch

from mmr1_mega.rollout import sglang_payloads as P
from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest, engine_prompt_ids
from mmr1_mega.rollout.server import ServerEngine
from mmr1_mega.rollout.sglang_server import SGLangRouter, SGLangServer, post


def serialize_flattened_bucket(bucket: Sequence[tuple[str, torch.Tensor]], tp_size: int) -> list[str]:
    """One base64 payload per engine TP rank holding the bucket as SGLang's flattened bucket
    ({"flattened_tensor", "metadata": [FlattenedTensorMetadata]}), pickled as SGLang's
    MultiprocessingSerializer does. Needs sglang importable (its classes are what its unpickler admits)."""
    import base64
    import io
    from multiprocessing.reduction import ForkingPickler

    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorMetadata

    if any(not t.is_cuda for _, t in bucket):
        # CPU tensors travel as shared-memory files; with torch's default file-descriptor strategy SGLang's
        # scheduler fails to receive them ("digest sent was rejected") and dies
        import torch.multiprocessing

        torch.multiprocessing.set_sharing_strategy("file_system")
    if any(t.is_cuda for _, t in bucket):
        # SGLang rebuilds CUDA IPC tensors by device uuid; its sender-side patch writes them
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions

        monkey_patch_torch_reductions()
    metas, parts, offset = [], [], 0
    for name, t in bucket:
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        metas.append(
            FlattenedTensorMetadata(name, t.shape, t.dtype, offset, offset + flat.numel(), flat.numel())
        )
        parts.append(flat)
        offset += flat.numel()
    payload = {"flattened_tensor": torch.cat(parts), "metadata": metas}
    out = []
    for _ in range(tp_size):  # each TP worker unpickles its own copy: IPC refcounts drop per rank
        buf = io.BytesIO()
        ForkingPickler(buf).dump(payload)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def _image_token_id(server: SGLangServer) -> int | None:
    """The model's image placeholder id from its folder's config.json (None when there is none)."""
    from mmr1_mega.rollout.server import model_facts

    try:
        return model_facts(server.model_path)["image_token_id"]
    except (OSError, KeyError, ValueError):
        return None


class SGLangEngine(ServerEngine):
    """The Engine protocol over SGLang servers (lifecycle, restarts and the spreading of generation are
    ServerEngine's).

    servers: the SGLangServer processes this client manages (started by launch(), restarted when dead);
    router: an sglang-router (not yet started) to send generation to instead of our own dispatcher; the
    engine starts it after the servers, keeps its workers = the fresh servers, and stops it;
    colocated: weights by CUDA IPC (True) or by NCCL broadcast (False); stage: the pipeline stage this
    client's sync leader serves (disaggregated groups are per stage); master_address / master_port:
    where this leader's NCCL group rendezvous (disaggregated); image_token_id: the model's image
    placeholder (read from the model folder when not given); max_inflight: prompt groups in flight per
    server.
    """

    def __init__(
        self,
        servers: Sequence[SGLangServer],
        router: SGLangRouter | None = None,
        colocated: bool = True,
        stage: int = 0,
        master_address: str = "127.0.0.1",
        master_port: int | None = None,
        timeout_s: float = 600.0,
        request_timeout_s: float = 3600.0,
        image_token_id: int | None = None,
        max_inflight: int = 32,
    ):
        super().__init__(servers, timeout_s, request_timeout_s, max_inflight=max_inflight)
        self.image_token_id = image_token_id if image_token_id is not None else _image_token_id(servers[0])
        self.router = router
        self.colocated = colocated
        self.stage = stage
        self.master_address, self.master_port = master_address, master_port
        self._group = None

    engine = "SGLang"

    def launch(self):
        """Start the servers (ServerEngine.launch), then the router in front of them. Returns self."""
        super().launch()
        if self.router is not None:
            self.router.worker_urls = [s.url for s in self.servers]
            try:
                self.router.start()
                self.router.wait_healthy(self.timeout_s)
            except EngineError:
                self.shutdown()
                raise
        return self

    def shutdown(self) -> None:
        if self.router is not None:
            self.router.stop()
        super().shutdown()

    def _sync_router(self) -> None:
        """The router routes to the fresh servers only (a stale one holds the checkpoint's weights)."""
        if self.router is not None and self.router.process is not None:
            self.router.set_workers([s.url for i, s in enumerate(self.servers) if i not in self.stale])

    def restart_dead(self) -> list[int]:
        restarted = super().restart_dead()
        self._sync_router()  # restarted and set-aside servers out of the router
        return restarted

    def mark_synced(self) -> list[int]:
        stale = super().mark_synced()
        self._sync_router()
        return stale

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, list]]:
        """Through the router when there is one, else ServerEngine's dispatcher over the fresh servers.

        With the router each sample is one request (the router takes single requests; its cache_aware
        policy keeps a group's samples, which share their prompt, on one server), a group is yielded when
        its n samples are in; the router retries failed requests on other servers itself. A call that
        still fails is retried once after dead servers were restarted (and taken out of the router)."""
        if self.router is None:
            yield from super().generate_stream(requests)
            return
        self._check_requests(requests)
        if not requests:
            return
        bodies = [P.sample_payloads(r, self.image_token_id) for r in requests]
        jobs = [(i, j) for i, r in enumerate(requests) for j in range(r.n)]
        got: dict[int, dict[int, GenerationOutput]] = {i: {} for i in range(len(requests))}
        pool = ThreadPoolExecutor(min(len(jobs), self.max_inflight * len(self.servers)))
        futures = {pool.submit(self._route, bodies[i][j], requests[i]): (i, j) for i, j in jobs}
        try:
            for f in as_completed(futures):
                i, j = futures[f]
                try:
                    got[i][j] = f.result()
                except EngineError:
                    with self._lock:
                        self.restart_dead()
                    got[i][j] = self._route(bodies[i][j], requests[i])
                if len(got[i]) == requests[i].n:
                    yield i, [got[i][k] for k in range(requests[i].n)]
        finally:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def _route(self, body: dict, r: GenerationRequest) -> GenerationOutput:
        answer = post(self.router.url, "/generate", body, self.request_timeout_s, "sglang-router")
        return P.parse_sample(answer, r)

    def _send(self, server: SGLangServer, requests: list[GenerationRequest]) -> list[list[GenerationOutput]]:
        answer = post(
            server.url, "/generate", P.generate_payload(requests, self.image_token_id), self.request_timeout_s
        )
        return P.parse_generate_response(answer, requests)

    def _check_requests(self, requests: Sequence[GenerationRequest]) -> None:
        super()._check_requests(requests)
        for r in requests:  # ValueError for a bad request, before anything is sent
            engine_prompt_ids(r, self.image_token_id, "SGLang")

    def _on_restart(self) -> None:
        if not self.colocated:
            self._group = None  # the new workers are not in the old NCCL group

    # ---- weights -------------------------------------------------------------------------------------

    def begin_update(self) -> None:
        """Pause generation on every server (running requests are retracted and resume afterwards) and
        open its weight-update session. A session a failed update left open is closed first."""
        self.restart_dead()
        self._each("/pause_generation", P.pause_payload("retract"))
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(self._begin_session, self.servers))

    def _begin_session(self, server: SGLangServer) -> None:
        try:
            post(server.url, "/begin_weight_update", P.begin_update_payload(), self.timeout_s)
        except EngineError as e:
            if "already open" not in str(e):
                raise
            # the last update failed half-way: its session is still open; finish it, then start ours
            post(server.url, "/end_weight_update", P.end_update_payload(), self.timeout_s)
            post(server.url, "/begin_weight_update", P.begin_update_payload(), self.timeout_s)

    def update_weights(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Send one bucket to every server (colocated: CUDA IPC payloads; else NCCL broadcast)."""
        if not bucket:
            return
        if self.colocated:
            payloads = {}
            for s in self.servers:
                if s.tp_size not in payloads:
                    payloads[s.tp_size] = serialize_flattened_bucket(bucket, s.tp_size)
            with ThreadPoolExecutor(len(self.servers)) as pool:
                futures = [
                    pool.submit(
                        post,
                        s.url,
                        "/update_weights_from_tensor",
                        P.update_from_tensor_payload(payloads[s.tp_size]),
                        self.request_timeout_s,
                    )
                    for s in self.servers
                ]
                for f in futures:
                    f.result()
            return
        from mmr1_mega.rollout.weight_group import broadcast_flat

        group = self._ensure_group()
        body = P.update_from_distributed_payload(bucket, self._group_name())
        with ThreadPoolExecutor(len(self.servers)) as pool:
            # the servers block in the broadcast until we send; post first, then broadcast
            futures = [
                pool.submit(post, s.url, "/update_weights_from_distributed", body, self.request_timeout_s)
                for s in self.servers
            ]
            broadcast_flat(bucket, group)
            for f in futures:
                f.result()

    def _group_name(self) -> str:
        return f"{P.GROUP_NAME}_stage{self.stage}"

    def _ensure_group(self):
        if self._group is not None:
            return self._group
        from mmr1_mega.rollout.weight_group import open_weight_update_group

        if self.master_port is None:
            raise EngineError("a disaggregated SGLang engine needs master_port for its weight-update group")
        world = 1 + sum(s.tp_size for s in self.servers)
        offsets = itertools.accumulate([1] + [s.tp_size for s in self.servers[:-1]])
        with ThreadPoolExecutor(len(self.servers)) as pool:
            futures = [
                pool.submit(
                    post,
                    s.url,
                    "/init_weights_update_group",
                    P.init_group_payload(
                        self.master_address, self.master_port, off, world, self._group_name()
                    ),
                    self.timeout_s,
                )
                for s, off in zip(self.servers, offsets)
            ]
            self._group = open_weight_update_group(
                self.master_address, self.master_port, world, self._group_name(), timeout_s=self.timeout_s
            )
            for f in futures:
                f.result()
        return self._group

    def end_update(self) -> None:
        """Flush every server's prefix cache (it holds KV of the old weights) and resume generation.
        Every tensor was sent, so restarted servers are fresh again."""
        try:
            self._each("/end_weight_update", P.end_update_payload())
            self._each("/flush_cache")
        finally:  # a paused server answers nothing, not even /health: always resume
            self._each("/continue_generation", P.continue_payload())
        self.stale.clear()
        self._sync_router()

    def flush_cache(self) -> None:
        """Drop every server's prefix cache."""
        self._each("/flush_cache")

    def _on_gpus(self) -> bool:
        return any(s.device != "cpu" for s in self.servers)

    def release_memory(self) -> None:
        """Colocated: hand weights and KV cache memory back to the actor (no-op when disaggregated, and on
        CPU, where there is no accelerator memory to hand over)."""
        if self.colocated and self._on_gpus():
            self._each("/release_memory_occupation", P.memory_payload())

    def resume_memory(self) -> None:
        """Colocated: take the memory back before the next update (no-op when disaggregated or on CPU)."""
        if self.colocated and self._on_gpus():
            self._each("/resume_memory_occupation", P.memory_payload())
