"""Building a run: process groups, actor and reference, and on rank 0 the engine, datasets, logs, progress."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from mmr1_mega.actor.actor import MegatronActor
from mmr1_mega.config import Config, ConfigError
from mmr1_mega.data.errors import DataError
from mmr1_mega.distributed.comm import leaders_phase, rank0_phase, set_rank0_phase_timeout
from mmr1_mega.distributed.init import initialize_model_parallel
from mmr1_mega.models.hf_io import CheckpointError, HFCheckpoint
from mmr1_mega.trainer import checkpoint as ckpt
from mmr1_mega.trainer.logger import PhaseProgress

log = logging.getLogger("mmr1_mega")


def setup_logging() -> None:
    """Rich console logging on rank 0; warnings only elsewhere."""
    rank = int(os.environ.get("RANK", "0"))
    if logging.getLogger("mmr1_mega").handlers:
        return
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
    except ImportError:  # rich is a dependency; keep logs working regardless
        handler = logging.StreamHandler()
    logger = logging.getLogger("mmr1_mega")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


@dataclass
class Run:
    cfg: Config
    actor: MegatronActor
    reference: MegatronActor | None
    pool_size: int
    image_token_id: int
    merge: int
    resume_from: Path | None
    engine: object = None  # rank 0: the client rollouts, validation and VAS refreshes go through
    # rollout.placement=per_node: on each node's local rank 0, the client that owns and feeds that node's
    # engine servers (the weight sync's holders); None otherwise
    node_engine: object = None
    # the HF folder the engines start from (model.hf_path, or the FP8 checkpoint with rollout.weight_dtype=fp8)
    engine_model: str = ""
    # rollout.weight_dtype=fp8, every rank: quant.fp8.FP8Weights, which makes each sync's FP8 payload
    fp8: object = None
    train_data: object = None
    val_data: object = None
    logger: object = None
    bar: PhaseProgress = field(default_factory=PhaseProgress)

    def progress(self, step: int) -> None:
        self.bar.update(step)

    def phase(self, name: str) -> None:
        """Show which phase of the step runs now (rollout, logprob, train, sync, validate, ...)."""
        self.bar.phase(name)

    def close(self) -> None:
        self.bar.stop()
        if self.logger is not None:
            self.logger.close()
        if self.engine is not None:
            self.engine.shutdown()
        if self.node_engine is not None:
            self.node_engine.shutdown()

    @property
    def per_node(self) -> bool:
        """Engines placed per node: the sync fans out to every node leader's engines."""
        return placement(self.cfg) == "per_node"  # never for the local engine (config and auto)

    def engine_phase(self, name: str, method: str) -> None:
        """Call `method` of the engines that own servers: rank 0's, or each node leader's (per node)."""
        if self.per_node:
            leaders_phase(name, lambda: getattr(self.node_engine, method)(), self.node_engine is not None)
        else:
            rank0_phase(name, lambda: getattr(self.engine, method)())


def node_layout() -> tuple[int, int, int]:
    """(node, nodes, local rank) from torchrun's variables (or the fork launcher's, which sets the same)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    rank = int(os.environ.get("RANK", "0"))
    if local_world < 1 or world % local_world:
        raise ConfigError(f"LOCAL_WORLD_SIZE={local_world} does not divide WORLD_SIZE={world}")
    return (
        rank // local_world,
        world // local_world,
        int(os.environ.get("LOCAL_RANK", str(rank % local_world))),
    )


def placement(cfg: Config) -> str:
    """rollout.placement resolved: auto is per_node for server engines on more than one node."""
    if cfg.rollout.placement != "auto":
        return cfg.rollout.placement
    return "per_node" if cfg.rollout.engine != "local" and node_layout()[1] > 1 else "rank0"


def node_host(nodes: int) -> str:
    """The address this node's engine servers listen on and rank 0 reaches them at: MMR1_NODE_HOST, the
    loopback on a single node, else the address this host's name resolves to."""
    import socket

    if os.environ.get("MMR1_NODE_HOST"):
        return os.environ["MMR1_NODE_HOST"]
    return "127.0.0.1" if nodes == 1 else socket.gethostbyname(socket.gethostname())


def engine_dtype(cfg: Config) -> str:
    """The dtype the rollout engines compute in (FP8 engines: bf16 for an fp32 actor)."""
    from mmr1_mega.quant.fp8 import engine_dtype as fp8_engine_dtype

    return fp8_engine_dtype(cfg.model.dtype, cfg.rollout.weight_dtype)


def prepare_fp8_engine(cfg: Config) -> tuple[str, dict[str, float]]:
    """rollout.weight_dtype=fp8 (rank 0): the FP8 checkpoint the engines start from and its static activation
    scales (modelopt format). rollout.fp8_checkpoint when given (its format checked against fp8_format), else
    written from model.hf_path into train.output_dir/engine-fp8 (modelopt: calibrated on the first
    rollout.fp8_calib_prompts training prompts). The local engine (an FP8 stand-in) starts from model.hf_path
    and gets its FP8 weights at the first sync."""
    from mmr1_mega.quant import fp8

    fmt = cfg.rollout.fp8_format
    if cfg.rollout.fp8_checkpoint:
        path = cfg.rollout.fp8_checkpoint
        found = fp8.checkpoint_format(HFCheckpoint(path).path)
        if found != fmt:
            raise ConfigError(
                f"rollout.fp8_checkpoint {path} holds {found or 'no FP8'} weights, rollout.fp8_format is {fmt}"
            )
        scales = fp8.read_input_scales(path) if fmt == "modelopt" else {}
    else:
        dataset = None
        if fmt == "modelopt":
            from mmr1_mega.data.rl_dataset import RLDataset
            from mmr1_mega.data.tokenizer import load_processor

            processor = load_processor(cfg.model.hf_path, cfg.data.min_pixels, cfg.data.max_pixels)
            dataset = RLDataset(cfg.data.train_files, cfg.data, processor, name="fp8 calibration")
        from mmr1_mega.distributed.cpu import device

        path = str(Path(cfg.train.output_dir) / "engine-fp8")
        log.info("writing the engines' FP8 (%s) checkpoint from %s to %s", fmt, cfg.model.hf_path, path)
        weights = fp8.prepare_engine_checkpoint(
            cfg.model.hf_path, path, fmt, dataset, cfg.rollout.fp8_calib_prompts, device=str(device())
        )
        scales = weights.input_scales
    if cfg.rollout.engine == "local":
        path = cfg.model.hf_path
    return path, {name: float(v) for name, v in scales.items()}


def start_node_engines(cfg: Config, model_path: str | None = None):
    """On each node's local rank 0: start this node's rollout.num_engines engine servers (the count is per
    node) and load the policy's initial weights; every rank gets every node's server addresses (collective,
    host group). Returns (this rank's node client or None, the addresses of every server, node by node)."""
    from mmr1_mega.distributed.cpu import device
    from mmr1_mega.rollout.factory import make_engine
    from mmr1_mega.trainer.layout import check_colocated_engines_fit

    _, nodes, local_rank = node_layout()
    dev = device().type
    if dev == "cuda" and cfg.rollout.colocate:
        check_colocated_engines_fit(cfg.rollout, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    holder = {}

    def leader_start():
        holder["engine"] = make_engine(
            cfg.rollout,
            model_path or cfg.model.hf_path,
            device=dev,
            dtype=engine_dtype(cfg),
            host=node_host(nodes),
            router=False,  # generation goes through rank 0's client (and its router, if any)
        )
        return holder["engine"].addresses()

    found = leaders_phase("start this node's engines", leader_start, local_rank == 0)
    return holder.get("engine"), [a for per in found if per for a in per]


def check_inputs(cfg: Config) -> object:
    """Everything that can be checked before any process group or model exists. Returns the HF config.

    Raises ConfigError / CheckpointError / DataError with one-line causes.
    """
    if not cfg.model.hf_path:
        raise CheckpointError("model.hf_path is empty: point it at a Hugging Face Qwen-VL directory")
    hf_config = HFCheckpoint(cfg.model.hf_path).config()
    cfg.check_against_model(hf_config)
    for key in ("train_files", "val_files", "sft_files"):
        for f in getattr(cfg.data, key):
            if not f.startswith("hf:") and not os.path.exists(f):
                raise DataError(f"data file {f} does not exist: check data.{key}")
    return hf_config


def init_layout(cfg: Config) -> None:
    """Process groups and megatron's layout with the run's timeouts (collective over all ranks)."""
    set_rank0_phase_timeout(cfg.train.rank0_phase_timeout_s)
    p = cfg.parallel
    initialize_model_parallel(
        p.tensor_parallel, p.pipeline_parallel, seed=cfg.train.seed, timeout_s=cfg.train.collective_timeout_s
    )


def build_run(cfg: Config, with_engine: bool = True) -> Run:
    """Initialise the layout and build everything a GRPO run needs (collective over all ranks)."""
    setup_logging()
    init_layout(cfg)
    p = cfg.parallel
    hf_config = AutoConfig.from_pretrained(cfg.model.hf_path)
    actor = MegatronActor(
        hf_config,
        cfg.model.hf_path,
        dtype=cfg.model.dtype,
        sequence_parallel=p.sequence_parallel,
        recompute=cfg.model.recompute,
        optim=cfg.optim,
        use_distributed_optimizer=p.use_distributed_optimizer,
        total_steps=cfg.train.steps * cfg.train.ppo_epochs * cfg.train.ppo_mini_batches,
        **cfg.train.micro_batching(),
    )
    reference = None
    if cfg.loss.kl_coef > 0:
        reference = MegatronActor(
            hf_config,
            cfg.model.reference_path or cfg.model.hf_path,
            dtype=cfg.model.dtype,
            sequence_parallel=p.sequence_parallel,
            train=False,
            **cfg.train.micro_batching(),
        )
    resume_from = ckpt.resolve_resume(cfg.checkpoint.resume, cfg.train.output_dir)
    run = Run(
        cfg=cfg,
        actor=actor,
        reference=reference,
        pool_size=0,
        image_token_id=hf_config.image_token_id,
        merge=hf_config.vision_config.spatial_merge_size,
        resume_from=resume_from,
    )

    # colocated engines start after the actor and the reference have left the device (trainer/handoff.py)
    from mmr1_mega.trainer.handoff import Handoff

    Handoff(run, cfg).park()

    run.engine_model = cfg.model.hf_path
    if with_engine and cfg.rollout.weight_dtype == "fp8":
        from mmr1_mega.quant.fp8 import FP8Weights

        run.engine_model, scales = rank0_phase("FP8 engine checkpoint", prepare_fp8_engine, cfg)
        run.fp8 = FP8Weights(cfg.rollout.fp8_format, scales)
    per_node = with_engine and run.per_node
    if per_node:  # each node's local rank 0 starts its engines; rank 0 learns where they all are
        run.node_engine, addresses = start_node_engines(cfg, run.engine_model)

    def rank0_parts() -> int:  # datasets, engine start-up (minutes for large models), logs
        from mmr1_mega.data.rl_dataset import RLDataset
        from mmr1_mega.data.tokenizer import load_processor
        from mmr1_mega.trainer.logger import MetricsLogger

        processor = load_processor(cfg.model.hf_path, cfg.data.min_pixels, cfg.data.max_pixels)
        run.train_data = RLDataset(cfg.data.train_files, cfg.data, processor, name="train")
        if cfg.data.val_files:
            run.val_data = RLDataset(cfg.data.val_files, cfg.data, processor, name="val")
        if with_engine and not per_node:
            run.engine = make_rollout_engine(cfg, run.engine_model)
        elif with_engine:  # a client over every node's servers, which their nodes own and feed
            from mmr1_mega.rollout.factory import make_client

            run.engine = make_client(cfg.rollout, addresses, engine_dtype(cfg))
        resumed = ckpt.read_trainer_state(resume_from) if resume_from is not None else {}
        run.logger = MetricsLogger(
            cfg.log,
            cfg.train.output_dir,
            cfg.to_dict(),
            Path(cfg.train.output_dir).name,
            resume_step=resumed.get("step"),
            wandb_run_id=resumed.get("wandb_run_id"),
        )
        run.bar = PhaseProgress("GRPO", cfg.train.steps)
        return len(run.train_data)

    run.pool_size = rank0_phase("datasets + rollout engine", rank0_parts)
    return run


def make_rollout_engine(cfg: Config, model_path: str | None = None):
    """The configured rollout engine, loaded with the policy's initial weights from model_path (default
    model.hf_path; rank 0)."""
    from mmr1_mega.distributed.cpu import device
    from mmr1_mega.rollout.factory import make_engine

    path = model_path or cfg.model.hf_path
    dev = str(device()) if cfg.rollout.engine == "local" else device().type
    return make_engine(cfg.rollout, path, device=dev, dtype=engine_dtype(cfg))


def evaluate(run: Run, cfg: Config, seed: int) -> dict[str, float]:
    """Validation of the engine's current weights (rank 0): greedy (train.val_temperature) accuracy, format,
    reward and length, with the accuracy's standard error over prompts; with train.val_samples = k > 0 also
    pass@1 estimated from k samples per prompt at rollout.temperature (val/pass1, val/pass1_se)."""
    from mmr1_mega.trainer.rollout import generate_and_score

    if run.val_data is None:
        return {}
    count = min(len(run.val_data), cfg.train.val_max_prompts)
    r = generate_and_score(
        run.engine,
        run.val_data,
        range(count),
        1,
        cfg.rollout,
        cfg.reward,
        seed=seed,
        temperature=cfg.train.val_temperature,
    )
    n = max(len(r.accuracy), 1)
    out = {
        "val/accuracy": sum(r.accuracy) / n,
        "val/accuracy_se": standard_error(r.accuracy),
        "val/format": sum(r.format) / n,
        "val/reward": sum(r.rewards) / n,
        "val/length_mean": sum(len(x) for x in r.response_ids) / n,
        "val/prompts": float(count),
    }
    k = cfg.train.val_samples
    if k:
        s = generate_and_score(
            run.engine, run.val_data, range(count), k, cfg.rollout, cfg.reward, seed=seed + 1
        )
        per_prompt = [sum(s.accuracy[i * k : (i + 1) * k]) / k for i in range(count)]
        out["val/pass1"] = sum(per_prompt) / max(count, 1)
        out["val/pass1_se"] = standard_error(per_prompt)
    return out


def standard_error(values) -> float:
    """The standard error of the mean of `values` (sample standard deviation / sqrt(count)); 0 for < 2."""
    m = len(values)
    if m < 2:
        return 0.0
    mean = sum(values) / m
    return (sum((v - mean) ** 2 for v in values) / (m - 1) / m) ** 0.5
