"""Cold-start SFT (MMR1 Sec. 3) on the same megatron actor; ends by exporting the policy as an HF directory,
which the GRPO stage starts from and uses as its KL reference."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist
from megatron.core import parallel_state as ps
from transformers import AutoConfig

from mmr1_mega.actor.actor import MegatronActor
from mmr1_mega.actor.batch import build_sft_batch
from mmr1_mega.config import Config, OptimConfig, dump_config
from mmr1_mega.distributed.comm import rank0_phase
from mmr1_mega.models.weights import export_hf
from mmr1_mega.trainer.logger import PhaseProgress
from mmr1_mega.trainer.setup import init_layout, setup_logging

log = logging.getLogger("mmr1_mega")
IGNORE_INDEX = -100


def sft_export_dir(cfg: Config) -> Path:
    return Path(cfg.sft.export_dir or Path(cfg.train.output_dir) / "sft_hf")


def train_sft(cfg: Config) -> dict:
    """Run cold-start SFT; returns the last metrics (rank 0) and writes the HF export."""
    setup_logging()
    init_layout(cfg)
    p = cfg.parallel
    hf_config = AutoConfig.from_pretrained(cfg.model.hf_path)
    s = cfg.sft
    optim = OptimConfig(
        lr=s.lr,
        min_lr=s.lr * 0.1,
        weight_decay=cfg.optim.weight_decay,
        clip_grad=cfg.optim.clip_grad,
        warmup_steps=s.warmup_steps,
        lr_decay_style=s.lr_decay_style,
    )
    actor = MegatronActor(
        hf_config,
        cfg.model.hf_path,
        dtype=cfg.model.dtype,
        sequence_parallel=p.sequence_parallel,
        recompute=cfg.model.recompute,
        optim=optim,
        use_distributed_optimizer=p.use_distributed_optimizer,
        total_steps=s.steps,
        **cfg.train.micro_batching(),
    )
    rank0 = dist.get_rank() == 0
    data = logger = None

    def open_data_and_logs():
        nonlocal data, logger
        from mmr1_mega.data.sft_dataset import SFTDataset
        from mmr1_mega.data.tokenizer import load_processor
        from mmr1_mega.trainer.logger import MetricsLogger

        data = SFTDataset(
            cfg.data.sft_files,
            cfg.data,
            load_processor(cfg.model.hf_path, cfg.data.min_pixels, cfg.data.max_pixels),
        )
        logger = MetricsLogger(cfg.log, Path(cfg.train.output_dir) / "sft", cfg.to_dict(), "sft")
        dump_config(cfg, Path(cfg.train.output_dir) / "sft" / "config.yaml")

    rank0_phase("SFT data + logs", open_data_and_logs)
    bar = PhaseProgress("SFT" if rank0 else None, s.steps)
    rng = np.random.default_rng(cfg.train.seed)
    order: list[int] = []
    metrics: dict = {}
    for step in range(1, s.steps + 1):
        t0 = time.perf_counter()

        def next_batch():
            nonlocal order
            while len(order) < s.batch_size:  # epochs of reshuffled passes
                order += rng.permutation(len(data)).tolist()
            take, order = order[: s.batch_size], order[s.batch_size :]
            conv = [data[i] for i in take]
            return build_sft_batch(
                [c["input_ids"] for c in conv],
                [[lab != IGNORE_INDEX for lab in c["labels"]] for c in conv],
                [c["pixel_values"] for c in conv],
                [c["image_grid_thw"] for c in conv],
                hf_config.image_token_id,
                hf_config.vision_config.spatial_merge_size,
            )

        batch = rank0_phase("SFT batch", next_batch)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        m = actor.sft_step(batch.select(range(dp_rank, len(batch), dp)))
        metrics = {f"sft/{k}": v for k, v in m.items()} | {"perf/step_seconds": time.perf_counter() - t0}

        def log_step(step, metrics):
            logger.log(step, metrics)
            bar.update(step)

        rank0_phase("SFT log", log_step, step, metrics)
    bar.phase("export")
    out = sft_export_dir(cfg)
    export_hf(actor.model, actor.table, out, cfg.model.hf_path)
    bar.stop()
    if rank0:
        logger.close()
        log.info("SFT policy exported to %s", out)
    return metrics
