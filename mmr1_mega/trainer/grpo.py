"""The GRPO + VAS loop (MMR1, arXiv 2509.21268, Algorithm 1), top to bottom.

Every rank runs this function. Rank 0 owns the data, the rollout engine, the rewards, the VAS state and
the logs; it builds each step's batch and sends each data-parallel replica its share as tensors
(distributed/batch_scatter.py); every rank trains its share on the megatron actor; the actor's weights then
flow into the engine. With rollout.async_steps=1 the next step's rollouts are generated during training.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch.distributed as dist
from megatron.core import parallel_state as ps

from mmr1_mega.algo import compute_advantages
from mmr1_mega.algo.mismatch import combine_mismatch, mismatch_stats
from mmr1_mega.config import Config, dump_config
from mmr1_mega.distributed.batch_scatter import scatter_batch
from mmr1_mega.distributed.comm import rank0_phase
from mmr1_mega.distributed.cpu import device
from mmr1_mega.distributed.memory import peak_memory_gb
from mmr1_mega.distributed.signals import (
    Preempted,
    install_stop_handlers,
    stop_requested_anywhere,
    stop_signal,
)
from mmr1_mega.models.spec import implementations
from mmr1_mega.ops import loss_implementation
from mmr1_mega.perf.flops import batch_forward_flops
from mmr1_mega.sync.sync import sync_weights
from mmr1_mega.trainer import checkpoint as ckpt
from mmr1_mega.trainer.handoff import Handoff
from mmr1_mega.trainer.rollout import (
    dynamic_sample,
    generate_and_score,
    group_unit,
    rollout_batch,
    rollout_metrics,
)
from mmr1_mega.trainer.setup import build_run, evaluate
from mmr1_mega.vas import DistributedVAS

log = logging.getLogger("mmr1_mega")


def train_grpo(cfg: Config) -> dict:
    """Run GRPO + VAS as configured; returns the last step's metrics (every rank).

    Raises Preempted after writing a checkpoint when a rank got SIGTERM / SIGUSR1 (distributed/signals.py).
    The rollout engines are stopped on every exit.
    """
    install_stop_handlers()
    run = build_run(cfg)  # actor, reference, engine + datasets + logger on rank 0, resume state
    try:
        return _train(run, cfg)
    finally:
        run.close()


def _train(run, cfg: Config) -> dict:
    rank0 = dist.get_rank() == 0
    n, B = cfg.rollout.n_samples, cfg.train.prompts_per_step
    vas = DistributedVAS(run.pool_size, cfg.vas)
    start = 0
    # rollout compute (rank 0): every generated response token - training rollouts of every sampling round
    # and VAS refresh rollouts - since the run began, and the refresh tokens not yet logged
    spent, refresh_tokens = [0], [0]
    if run.resume_from is not None:
        run.actor.onload()  # the checkpoint loads into the parameters where they compute
        state = ckpt.load_checkpoint(run.resume_from, run.actor)
        start = state["step"]
        spent[0] = int(state.get("rollout_tokens", 0))
        if rank0:
            vas.load_state_dict(state["vas"])
            log.info("resumed from %s at step %d", run.resume_from, start)
    handoff = Handoff(run, cfg)  # colocated engines and actor take turns on the accelerators

    def push_weights():
        quantize = run.fp8.quantize if run.fp8 is not None else None  # rollout.weight_dtype=fp8
        if not run.per_node:
            return sync_weights(
                run.actor.model, run.actor.table, run.engine, cfg.rollout.bucket_mb, quantize=quantize
            )
        # every node leader feeds its node's engines; then rank 0's client takes every healthy server back
        metrics = sync_weights(
            run.actor.model,
            run.actor.table,
            run.node_engine,
            cfg.rollout.bucket_mb,
            fanout=True,
            quantize=quantize,
        )
        down = rank0_phase("engines back in service", lambda: run.engine.mark_synced())
        if down:
            log.warning("engine servers %s are down after the sync: rollouts go to the others", down)
        return metrics

    handoff.to_engine(push_weights)
    rank0_phase("write config", lambda: dump_config(cfg, f"{cfg.train.output_dir}/config.yaml"))

    def score_fn(prompt_indices):  # VAS refresh: N fresh rollouts per prompt (rank 0 only)
        r = generate_and_score(
            run.engine,
            run.train_data,
            prompt_indices,
            cfg.vas.n_rollouts,
            cfg.rollout,
            cfg.reward,
            seed=cfg.train.seed * 1_000_003 + 7919 * vas_step[0],
        )
        refresh_tokens[0] += sum(len(x) for x in r.response_ids)
        return r.outcomes()

    vas_step = [start]
    metrics: dict = {}
    # what runs (the same every step): logged with each step's metrics
    impl = {"impl/grpo_loss": loss_implementation(device())}
    impl.update({f"impl/{k}": v for k, v in implementations().items()})
    run.progress(start)
    if start == 0 and cfg.train.val_every_steps and cfg.data.val_files:

        def validate_start():  # the starting policy (e.g. after SFT)
            run.phase("validate (starting policy)")
            run.logger.log(0, evaluate(run, cfg, seed=cfg.train.seed))

        rank0_phase("validate the starting policy", validate_start)
    # rollout.async_steps=1: a worker thread on rank 0 generates the next step's rollouts while the actor
    # trains (`pending`); `engine_version` is the policy step the engine serves
    asynchronous = bool(cfg.rollout.async_steps)
    pool = ThreadPoolExecutor(1, thread_name_prefix="async-rollout") if asynchronous and rank0 else None
    pending = None
    engine_version = start
    ready = None  # async: the next step's (batch, metrics), received at the end of the step before

    def rollout_and_score(indices, step, version):
        seed = cfg.train.seed * 7_919 + step * 104_729

        def generate(prompts, round_):  # round 0: the step's own prompts (as without dynamic sampling)
            r = generate_and_score(
                run.engine,
                run.train_data,
                prompts,
                n,
                cfg.rollout,
                cfg.reward,
                seed=seed + 1_000_003 * round_,
            )
            vas.observe(prompts, r.outcomes())  # every generated group informs VPS, kept or not
            return r

        rollouts = generate(indices, 0)
        generated, extra = rollouts, {}
        if cfg.train.dynamic_sampling:  # zero-variance groups never reach the loss
            unit = group_unit(n, ps.get_data_parallel_world_size() * cfg.train.ppo_mini_batches)
            ds = dynamic_sample(rollouts, B, unit, cfg.train.max_sampling_rounds, vas.extra_indices, generate)
            rollouts, generated, extra = ds.kept, ds.generated, ds.metrics()
        # optimizer steps between the policy that generated and the one that trains (which has step - 1)
        metrics = rollout_metrics(generated) | extra | vas.metrics()
        metrics["rollout/staleness"] = float(step - 1 - version)
        if not rollouts.prompt_indices:  # nothing with a learning signal: this step trains on nothing
            return None, metrics
        batch = rollout_batch(run.train_data, rollouts, run.image_token_id, run.merge)
        batch.advantages = compute_advantages(batch.rewards, batch.group_ids, cfg.loss)
        # model FLOPs of one forward pass of the actor over the step's batch (perf/: MFU per phase)
        metrics["perf/forward_flops"] = batch_forward_flops(run.actor.hf_config, batch)
        metrics["perf/batch_tokens"] = float(sum(batch.lengths))
        return batch, metrics

    held = {}  # rank 0: the step batch, which leaves rank 0 only as each replica's share (scatter_batch)

    def keep_batch(result):
        """Rank 0 keeps (batch, metrics)'s batch; every rank learns whether there is one, its token
        count and the metrics."""
        batch, metrics = result
        held["batch"] = batch
        return batch is not None, (int(batch.attention_mask.sum()) if batch is not None else 0), metrics

    try:
        for step in range(start + 1, cfg.train.steps + 1):
            t = {"start": time.perf_counter()}
            vas_step[0] = step
            run.phase("sample (VAS)")
            if not asynchronous or ready is None:
                # 1. VAS draws the prompts on rank 0 (refreshing VPS when due) and broadcasts the indices
                indices = vas.next_indices(B, score_fn if rank0 else None).tolist()
                t["sample"] = time.perf_counter()
                # 2. rollouts and rewards (rank 0): the batch with group-normalised advantages stays there
                run.phase("rollout + reward")
                has_batch, tokens, step_metrics = rank0_phase(
                    "rollout + reward",
                    lambda args: keep_batch(rollout_and_score(*args)),
                    (indices, step, engine_version),
                )
            else:  # async: generated while the previous step trained
                has_batch, tokens, step_metrics = ready
                t["sample"] = time.perf_counter()
            started = asynchronous and step < cfg.train.steps
            if started:  # the next step's prompts (every rank draws), generated on rank 0 from now on
                nxt = vas.next_indices(B, score_fn if rank0 else None).tolist()
                pending = pool.submit(rollout_and_score, nxt, step + 1, engine_version) if rank0 else None
            t["rollout"] = time.perf_counter()
            # 3. each data-parallel replica's share, as tensors; old and reference log-probs (last stage)
            handoff.to_actor()
            temperature = cfg.rollout.temperature or 1.0
            train_metrics = {}
            if has_batch:
                local = scatter_batch(held.pop("batch") if rank0 else None)  # this replica's rows, as tensors
                run.phase("old / ref logprobs")
                local.old_logp = run.actor.logprobs(local, temperature)
                if run.reference is not None:
                    local.ref_logp = run.reference.logprobs(local, temperature)
                if cfg.log.engine_mismatch and local.engine_logp is not None:
                    step_metrics = step_metrics | engine_mismatch(run.actor, local, temperature)
            t["logprob"] = time.perf_counter()
            # 4. PPO epochs over mini-batches: one optimizer step each
            run.phase("train")
            for _ in range(cfg.train.ppo_epochs if has_batch else 0):
                for k in range(cfg.train.ppo_mini_batches):
                    mini = local.select(range(k, len(local), cfg.train.ppo_mini_batches))
                    train_metrics = run.actor.train_step(mini, cfg.loss, temperature)
            t["train"] = time.perf_counter()
            # 5. new weights into the rollout engine (async: once the generation in flight is done)
            if started:
                run.phase("rollout + reward (next step, generated during training)")
                ready = rank0_phase(
                    "rollout + reward (async)", lambda work=pending: keep_batch(work.result())
                )
                pending = None
            run.phase("weight sync")
            sync = handoff.to_engine(push_weights)
            engine_version = step
            t["sync"] = time.perf_counter()

            # peak memory of every rank so far (the accelerator's with CUDA, else the process's RSS)
            peaks = [None] * dist.get_world_size()
            dist.all_gather_object(peaks, peak_memory_gb())
            step_metrics = step_metrics | {f"perf/peak_memory_gb/rank{r}": v for r, v in enumerate(peaks)}

            # 6. validation, logs, checkpoint
            def validate_and_log(step, step_metrics, train_metrics, t, tokens, sync):
                metrics = dict(step_metrics) | impl
                metrics.update({f"actor/{k}": v for k, v in train_metrics.items()})
                metrics.update(_perf(t, tokens, sync))
                metrics["rollout/refresh_tokens"] = float(refresh_tokens[0])
                spent[0] += int(step_metrics.get("rollout/response_tokens", 0)) + refresh_tokens[0]
                refresh_tokens[0] = 0
                metrics["rollout/total_tokens"] = float(spent[0])
                budget = cfg.train.max_rollout_tokens
                metrics["train/last_step"] = float(
                    step == cfg.train.steps or (budget > 0 and spent[0] >= budget)
                )
                if cfg.train.val_every_steps and (
                    step % cfg.train.val_every_steps == 0 or metrics["train/last_step"]
                ):
                    run.phase("validate")
                    metrics.update(evaluate(run, cfg, seed=cfg.train.seed))
                run.logger.log(step, metrics)
                run.progress(step)
                return metrics

            metrics = rank0_phase(
                "validate + log", validate_and_log, step, step_metrics, train_metrics, t, tokens, sync
            )
            last = bool(metrics["train/last_step"])  # the step budget or the rollout-token budget reached
            due = cfg.checkpoint.save_every_steps and (step % cfg.checkpoint.save_every_steps == 0 or last)
            stop = stop_requested_anywhere()  # SIGTERM / SIGUSR1 on any rank: checkpoint, then stop
            if due or stop:
                run.phase("checkpoint")
                run.actor.onload()  # parked by a colocated hand-off: the state is saved from where it computes
                path = ckpt.save_checkpoint(
                    cfg.train.output_dir,
                    step,
                    run.actor,
                    {
                        "vas": vas.state_dict() if rank0 else None,
                        "wandb_run_id": run.logger.wandb_run_id if rank0 else None,
                        "rollout_tokens": spent[0] if rank0 else None,
                    },
                    cfg.checkpoint.keep_last,
                )
                handoff.park()
            if stop:
                raise Preempted(
                    f"stopped by {stop_signal() or 'a signal to another rank'} after step {step}: checkpoint "
                    f"{path} written; continue with checkpoint.resume=auto"
                )
            if last:
                if step < cfg.train.steps:
                    log.info(
                        "rollout-token budget %d reached at step %d: done", cfg.train.max_rollout_tokens, step
                    )
                break
    finally:
        if pool is not None:  # a failed step may leave a generation running: do not wait for it
            pool.shutdown(wait=False, cancel_futures=True)
    return metrics


def engine_mismatch(actor, local, temperature: float) -> dict[str, float]:
    """rollout/logp_mismatch_*: the engine's raw log-probs of its samples vs the actor's at temperature 1
    (old_logp when sampling at temperature 1, else one more forward), over every rank's share; the same
    dict on every rank."""
    raw = local.old_logp if temperature == 1.0 else actor.logprobs(local, 1.0)
    mine = None
    if raw is not None and ps.get_tensor_model_parallel_rank() == 0:  # last stage; TP ranks agree
        mine = mismatch_stats(local.engine_logp, raw, local.response_mask)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return combine_mismatch(parts)


def _perf(t: dict, tokens: int, sync: dict) -> dict:
    # time/sample includes a VAS refresh when one was due (its own time: vas/last_refresh_s);
    # time/rollout = generation (time/generate) + rewards (time/reward) + building and sending the batch
    phases = ["sample", "rollout", "logprob", "train", "sync"]
    keys = ["start"] + phases
    out = {f"time/{p}": t[p] - t[keys[i]] for i, p in enumerate(phases)}
    total = t["sync"] - t["start"]
    out.update(
        {
            "perf/step_seconds": total,
            "perf/tokens_per_second": tokens / max(total, 1e-9),
            "sync/seconds": float(sync.get("seconds", 0.0)),
            "sync/gb_per_s": float(sync.get("gb_per_s", 0.0)),
            "sync/bytes": float(sync.get("bytes", 0.0)),
        }
    )
    for k, e in enumerate(sync.get("engines", [])):  # each engine client (per node with per-node placement)
        out[f"sync/engine{k}_seconds"] = float(e["seconds"])
        out[f"sync/engine{k}_bytes"] = float(e["bytes"])
    return out
