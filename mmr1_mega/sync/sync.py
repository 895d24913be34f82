"""Weight sync: the actor's TP x PP (x DP) shards -> HF-named buckets -> rollout engine(s).

Who does what (collective over every rank of the actor):
- every TP rank of data-parallel replica 0 iterates its stage's `iter_hf_weights` (the TP all-gather and
  the un-interleaving of fused QKV / gate-up happen there, one tensor at a time);
- the TP-rank-0 of each stage ("stage leader") groups the stream into buckets of at most bucket_mb and
  either hands each bucket to its own engine client ("direct": remote engines such as SGLang, which
  every leader can reach), or, when only global rank 0 holds an engine (the in-process local engine),
  sends it to rank 0 over torch.distributed point-to-point ("relay"); rank 0 loads its own stage first,
  then each later stage's buckets in stage order;
- every other rank (DP replicas > 0) waits at the closing barrier.
Global rank 0 brackets the update with engine.begin_update() / end_update() (pause, flush, continue).
"fanout" (engines placed per node: each node's local rank 0 holds a client of that node's engines): every
stage's buckets reach every holder, the stage leader broadcasting each bucket in a group of itself and the
holders that do not compute that stage's tensors themselves (a holder among the stage's TP ranks of
replica 0 buckets its own all-gathered stream); stages go in order, so no rank waits on a later stage; each
holder brackets its own engines' update. Each holder receives the model once.
At most one bucket per stage is in flight, so the full model never sits in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mmr1_mega.distributed.comm import comm_device
from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.models.weights import iter_hf_weights
from mmr1_mega.sync.buckets import Bucket, iter_buckets, nbytes, pack, unpack
from mmr1_mega.sync.checksum import tensor_checksum

log = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """Weights could not be moved, or the engine's weights differ from the actor's after a sync."""


def _layout() -> dict:
    return {
        "rank": dist.get_rank(),
        "stage": ps.get_pipeline_model_parallel_rank(),
        "tp": ps.get_tensor_model_parallel_rank(),
        "dp": ps.get_data_parallel_rank(),
    }


def _roles(engine, fanout: bool = False) -> tuple[str, dict[int, int], list[dict]]:
    """The mode ("direct" | "relay" | "fanout"), the global rank of each stage's leader, and every rank's
    layout (with whether it holds an engine)."""
    me = _layout() | {"engine": engine is not None}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    leaders = {r["stage"]: r["rank"] for r in everyone if r["tp"] == 0 and r["dp"] == 0}
    holders = {r["rank"] for r in everyone if r["engine"]}
    if fanout:
        if not holders:
            raise SyncError("a per-node sync needs engines on the node leaders; no rank holds one")
        return "fanout", leaders, everyone
    if set(leaders.values()) <= holders:
        return "direct", leaders, everyone
    if holders == {0} and leaders[0] == 0:
        return "relay", leaders, everyone
    raise SyncError(
        f"engines are held by ranks {sorted(holders)}, but a sync needs one on every stage leader "
        f"{sorted(leaders.values())} (remote engines) or on rank 0 only (the local engine)"
    )


_fanout_groups: dict = {}


def _fanout_plan(everyone: list[dict], leaders: dict[int, int]) -> dict[int, tuple[int, list[int], object]]:
    """stage -> (its leader, the holders that receive its buckets by broadcast, their group). Every rank
    creates the groups, in stage order (a collective the first time)."""
    holders = sorted(r["rank"] for r in everyone if r["engine"])
    plan = {}
    for stage, src in sorted(leaders.items()):
        streaming = {r["rank"] for r in everyone if r["stage"] == stage and r["dp"] == 0}
        receivers = [h for h in holders if h not in streaming]
        members = tuple(sorted({src, *receivers}))
        key = (id(dist.group.WORLD), members)
        if receivers and key not in _fanout_groups:
            _fanout_groups[key] = dist.new_group(list(members))
        plan[stage] = (src, receivers, _fanout_groups.get(key))
    return plan


def _broadcast_stage(buckets: Iterator[Bucket], src: int, group) -> Iterator[Bucket]:
    """The stage leader: broadcast each bucket in group (yielding it too), then an end marker."""
    for bucket in buckets:
        buffer, metas = pack(bucket)
        dist.broadcast_object_list([metas], src=src, group=group)
        dist.broadcast(buffer.to(comm_device(group)), src=src, group=group)
        yield bucket
    dist.broadcast_object_list([None], src=src, group=group)


def _receive_stage(src: int, group) -> Iterator[Bucket]:
    """A receiving holder: the stage leader's buckets, until its end marker."""
    device = comm_device(group)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=src, group=group)
        if box[0] is None:
            return
        buffer = torch.empty(box[0][-1].end if box[0] else 0, dtype=torch.uint8, device=device)
        dist.broadcast(buffer, src=src, group=group)
        yield unpack(buffer, box[0])


def _send_stage(buckets: Iterator[Bucket], dst: int) -> None:
    for bucket in buckets:
        buffer, metas = pack(bucket)
        dist.send_object_list([metas], dst=dst)
        dist.send(buffer.to(comm_device()), dst=dst)
    dist.send_object_list([None], dst=dst)  # end of this stage


def _recv_stage(src: int, device: torch.device) -> Iterator[Bucket]:
    while True:
        box = [None]
        dist.recv_object_list(box, src=src)
        metas = box[0]
        if metas is None:
            return
        buffer = torch.empty(metas[-1].end if metas else 0, dtype=torch.uint8, device=device)
        dist.recv(buffer, src=src)
        yield unpack(buffer, metas)


def _engine_checksums(engine) -> dict[str, str]:
    if not hasattr(engine, "weight_checksums"):
        raise SyncError(f"{type(engine).__name__} cannot report weight checksums: run without verify")
    return engine.weight_checksums()


def compare_checksums(actor: dict[str, str], engine: dict[str, str]) -> dict[str, list[str]]:
    """Names whose checksum differs, names the actor has and the engine lacks, and the reverse
    (an engine tensor no sync ever writes is stale by construction). Names compare in their on-disk form
    (hf_io.canonical_name), whichever form each side reports."""
    actor = {canonical_name(n): v for n, v in actor.items()}
    engine = {canonical_name(n): v for n, v in engine.items()}
    return {
        "mismatched": sorted(n for n in actor.keys() & engine.keys() if actor[n] != engine[n]),
        "missing_in_engine": sorted(actor.keys() - engine.keys()),
        "engine_only": sorted(engine.keys() - actor.keys()),
    }


def sync_weights(
    model,
    table,
    engine,
    bucket_mb: float = 512,
    dtype: torch.dtype | None = None,
    verify: bool = False,
    fanout: bool = False,
    quantize=None,
) -> dict:
    """Copy the actor's current weights into the rollout engine(s). Collective over all ranks.

    fanout: engines placed per node (every rank holding an engine client gets every tensor; see the
    module docstring); otherwise direct or relay, by who holds engines.

    Takes the (possibly DDP-wrapped) megatron stage model, the family's weight table, this rank's engine
    client or None (see module docstring for who holds one), the bucket size in MiB, an optional dtype to
    cast to (e.g. bf16 for a bf16 engine), and verify (compare a checksum of every engine tensor with the
    actor's export after the update), and quantize: what the engines load made from the actor's HF-named
    stream (e.g. quant.fp8.FP8Weights.quantize: FP8 weights and their scales), applied by the ranks that
    bucket, before bucketing; verify then compares the quantized tensors.
    Returns metrics, equal on every rank: seconds, bytes, gb_per_s, tensors, buckets, mode, per-stage
    seconds and bytes, and with verify the checksum comparison. Raises SyncError (bad engine placement,
    or verify found a difference) or the engine's EngineError.
    """
    start = time.perf_counter()
    mode, leaders, everyone = _roles(engine, fanout)
    me = _layout()
    leader = me["tp"] == 0 and me["dp"] == 0
    streams = me["dp"] == 0  # every TP rank of replica 0 takes part in the TP all-gathers
    sent = {"bytes": 0, "tensors": 0, "buckets": 0}
    sums: dict[str, str] = {}
    fed = {"bytes": 0, "begin": None, "seconds": 0.0}  # what this rank's engine client was given, and when

    def begin() -> None:
        fed["begin"] = time.perf_counter()
        engine.begin_update()

    def feed(bucket: Bucket) -> None:
        engine.update_weights(bucket)
        fed["bytes"] += sum(nbytes(t) for _, t in bucket)

    def end() -> None:
        engine.end_update()
        fed["seconds"] = time.perf_counter() - fed["begin"]

    def served(stream):  # the tensors the engines load
        return stream if quantize is None else quantize(stream)

    def counted(buckets: Iterator[Bucket]) -> Iterator[Bucket]:
        for b in buckets:
            sent["buckets"] += 1
            for name, t in b:
                sent["tensors"] += 1
                sent["bytes"] += nbytes(t)
                if verify:
                    sums[name] = tensor_checksum(t)
            yield b

    if mode == "fanout":
        plan = _fanout_plan(everyone, leaders)
        if engine is not None:
            begin()
        dist.barrier()  # no bucket may arrive at an engine that is still generating
        stage_seconds = 0.0
        for stage, (src, receivers, group) in sorted(plan.items()):
            if streams and me["stage"] == stage:
                stream = iter_hf_weights(model, table, dtype)
                if leader:
                    buckets = counted(iter_buckets(served(stream), bucket_mb))
                    if receivers:
                        buckets = _broadcast_stage(buckets, src, group)
                elif engine is not None:  # a holder among the stage's TP ranks: it has every full tensor
                    buckets = iter_buckets(served(stream), bucket_mb)
                else:
                    buckets = stream
                for b in buckets:
                    if engine is not None:
                        feed(b)
                stage_seconds = time.perf_counter() - start
            elif me["rank"] in receivers:
                for b in _receive_stage(src, group):
                    feed(b)
        if engine is not None:
            end()
    elif me["rank"] == 0:
        begin()
    if mode != "fanout":
        dist.barrier()  # no bucket may arrive at an engine that is still generating
    if streams and mode != "fanout":
        stream = iter_hf_weights(model, table, dtype)
        if not leader:
            for _ in stream:  # feed the leader's all-gathers
                pass
        else:
            buckets = counted(iter_buckets(served(stream), bucket_mb))
            if mode == "direct" or me["rank"] == 0:
                for b in buckets:
                    feed(b)
            else:
                _send_stage(buckets, dst=0)
    if mode != "fanout":
        stage_seconds = time.perf_counter() - start
    if mode == "relay" and me["rank"] == 0:
        device = comm_device()
        for stage in sorted(leaders)[1:]:
            for b in _recv_stage(leaders[stage], device):
                feed(b)
    if mode != "fanout" and me["rank"] == 0:
        end()
    dist.barrier()
    seconds = time.perf_counter() - start

    parts = [None] * dist.get_world_size()
    engine_report = None
    if engine is not None:
        servers = getattr(engine, "servers", None)
        engine_report = {
            "rank": me["rank"],
            "servers": len(servers) if servers is not None else 1,
            "bytes": fed["bytes"],
            "seconds": fed["seconds"],
        }
    dist.all_gather_object(parts, (me["stage"], leader, sent, stage_seconds, sums, seconds, engine_report))
    stages = sorted((p for p in parts if p[1]), key=lambda p: p[0])
    total = sum(p[2]["bytes"] for p in stages)
    seconds = max(p[5] for p in parts)  # the update is done when the slowest rank is
    metrics = {
        "mode": mode,
        "seconds": seconds,
        "bytes": total,
        "gb_per_s": total / seconds / 1e9 if seconds > 0 else float("inf"),
        "tensors": sum(p[2]["tensors"] for p in stages),
        "buckets": sum(p[2]["buckets"] for p in stages),
        "bucket_mb": bucket_mb,
        "stage_seconds": [p[3] for p in stages],
        "stage_bytes": [p[2]["bytes"] for p in stages],
        # per engine client (one per node with engines placed per node; rank 0's otherwise): the bytes it
        # gave its servers (each server gets them all) and its seconds from begin_update to end_update
        "engines": [p[6] for p in parts if p[6] is not None],
    }
    if verify:
        actor = {n: s for p in stages for n, s in p[4].items()}
        if mode == "fanout":  # every holder's engine, each compared with the actor
            mine = compare_checksums(actor, _engine_checksums(engine)) if engine is not None else None
            reports = [None] * dist.get_world_size()
            dist.all_gather_object(reports, mine)
            merged = {
                k: sorted({n for r in reports if r for n in r[k]})
                for k in ("mismatched", "missing_in_engine", "engine_only")
            }
            report = [merged]
            metrics["verified_engines"] = sum(r is not None for r in reports)
        else:
            report = [compare_checksums(actor, _engine_checksums(engine)) if me["rank"] == 0 else None]
            dist.broadcast_object_list(report, src=0)
        metrics["verify"] = report[0]
        bad = {k: v for k, v in report[0].items() if v}
        if bad:
            raise SyncError(f"engine weights differ from the actor's after sync: {bad}")
    if me["rank"] == 0:
        log.info(
            "weight sync (%s): %d tensors, %.1f MB in %d buckets, %.3f s, %.2f GB/s",
            mode,
            metrics["tensors"],
            total / 1e6,
            metrics["buckets"],
            seconds,
            metrics["gb_per_s"],
        )
    return metrics


def verify_weights(
    model, table, engine, dtype: torch.dtype | None = None, quantize=None
) -> dict[str, list[str]]:
    """Compare a checksum of every engine tensor with the actor's current export (through `quantize`, as
    sync_weights sends it), without updating.

    Collective over all ranks; `engine` is needed on rank 0 only. Returns compare_checksums' report
    (empty lists when equal), the same on every rank.
    """
    me = _layout()
    sums = {}
    if me["dp"] == 0:
        stream = iter_hf_weights(model, table, dtype)
        if me["tp"] != 0:
            for _ in stream:  # feed the TP all-gathers
                pass
        else:
            for name, t in stream if quantize is None else quantize(stream):
                sums[name] = tensor_checksum(t)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sums)
    actor = {n: s for p in parts for n, s in p.items()}
    report = [compare_checksums(actor, _engine_checksums(engine)) if me["rank"] == 0 else None]
    dist.broadcast_object_list(report, src=0)
    return report[0]
