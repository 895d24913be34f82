"""Configuration: dataclasses with working defaults, YAML files over them, dotted CLI overrides over YAML.

    cfg = load_config("examples/demo_cpu.yaml", ["parallel.tensor_parallel=2", "vas.mixture_ratio=0.8"])

Every section validates itself; `Config.validate()` also checks what spans sections, and
`check_against_model(hf_config)` what needs the model (TP dividing heads / query groups, PP dividing
layers). Errors name the key and say what to do, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.data.config import DataConfig
from mmr1_mega.reward.config import RewardConfig
from mmr1_mega.vas.config import VASConfig


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key."""


@dataclass
class ModelConfig:
    """hf_path: HF directory of the policy (config, tokenizer, processor, safetensors weights).
    reference_path: HF directory of the KL reference ("" = the initial policy). dtype: fp32 / bf16.
    load_checkpoint: a megatron distributed checkpoint to start from instead of hf_path's weights."""

    hf_path: str = ""
    reference_path: str = ""
    dtype: str = "bf16"
    recompute: bool = False
    load_checkpoint: str = ""

    def validate(self) -> None:
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"model.dtype must be fp32, bf16 or fp16, got {self.dtype!r}")


@dataclass
class ParallelConfig:
    """Megatron layout. Data parallel size is world_size / (tensor_parallel * pipeline_parallel)."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False

    def validate(self) -> None:
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ConfigError("parallel.tensor_parallel and parallel.pipeline_parallel must be >= 1")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("parallel.sequence_parallel needs parallel.tensor_parallel > 1")


@dataclass
class OptimConfig:
    """Adam(W) through megatron's optimizer. lr schedule: constant after linear warmup, or cosine."""

    lr: float = 1e-6
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 0
    lr_decay_style: str = "constant"

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.lr_decay_style not in ("constant", "cosine", "linear"):
            raise ConfigError(
                f"optim.lr_decay_style must be constant, cosine or linear, got {self.lr_decay_style!r}"
            )
        if self.clip_grad < 0:
            raise ConfigError("optim.clip_grad must be >= 0 (0 disables clipping)")


@dataclass
class RolloutConfig:
    """Generation. engine: local (transformers, in-process), sglang or vllm. Paper defaults (App. C)."""

    engine: str = "local"
    n_samples: int = 8
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 2048
    stop: list[str] = field(default_factory=list)
    # token ids that end a response besides the model's eos (every engine takes them: stop_token_ids)
    stop_token_ids: list[int] = field(default_factory=list)
    engine_tensor_parallel: int = 1
    # engines per node that runs engines (every node with placement per_node, rank 0's node otherwise)
    num_engines: int = 1
    mem_fraction: float = 0.7
    bucket_mb: int = 512
    colocate: bool = True
    # colocate=false: the GPUs (of rank 0's node) the engines run on, num_engines x engine_tensor_parallel
    # of them, none of the actor's; each engine's share must be consecutive ids
    engine_gpus: list[int] = field(default_factory=list)
    # the argv that starts one server, before its flags (default: python -m sglang.launch_server); e.g. a
    # container wrapper
    server_launcher: list[str] = field(default_factory=list)
    server_args: list[str] = field(default_factory=list)  # more flags for every engine server
    server_env: dict = field(default_factory=dict)  # more environment variables for every engine server
    # SGLang: --enable-deterministic-inference, without which it ignores sampling seeds (GPU attention
    # backends only; costs throughput)
    deterministic: bool = False
    # vLLM: where weight-update shards are written for the servers to reload (default /dev/shm)
    weight_dir: str = ""
    # vLLM: how weights reach the servers: reload (safetensors shards in weight_dir, any device), ipc
    # (vLLM's CUDA IPC weight transfer, colocated GPU servers), auto (ipc where it can run, else reload)
    weight_transfer: str = "auto"
    # where engine servers run: per_node (each node's local rank 0 starts num_engines / nodes engines on its
    # node and feeds them in the weight sync; rank 0 spreads rollouts over all), rank0 (every engine on rank
    # 0's node), auto (per_node for server engines on more than one node)
    placement: str = "auto"
    # 0: on-policy (rollouts of step t generated after step t-1's weights arrived); 1: one step off-policy —
    # step t+1's rollouts are generated while the actor trains on step t (engines of their own: the local
    # engine or colocate=false), by the weights of step t-1; loss.tis_cap corrects for it
    async_steps: int = 0
    server_timeout_s: float = 600.0  # an engine server must answer /health within this after start
    request_timeout_s: float = 3600.0  # one generation request (one prompt group's n responses)
    # rollouts are streamed: one request per prompt group, at most this many in flight per engine server;
    # a request that fails or times out on one server is sent to another
    max_inflight_per_engine: int = 32
    # SGLang: put sglang-router in front of the servers that generate (rank 0 starts it after the engines;
    # it then picks the server for each request, cache-aware by default). router_launcher: the argv prefix
    # that starts it (default: python -m sglang_router.launch_router of this interpreter; e.g.
    # [.venv-sglang/bin/python, -m, sglang_router.launch_router]); router_args: more flags
    router: bool = False
    router_launcher: list[str] = field(default_factory=list)
    router_policy: str = "cache_aware"
    router_args: list[str] = field(default_factory=list)
    # the engines' weights: "bf16" serves the actor's own dtype (model.dtype) unquantized; "fp8" serves FP8
    # (e4m3) decoder linears, quantized by nvidia-modelopt at every weight sync (mmr1_mega/quant/fp8.py); the
    # engines then compute in bf16 (fp16 with an fp16 actor)
    weight_dtype: str = "bf16"
    # fp8: "block" (128 x 128 scales, dynamic activations: vLLM and SGLang on GPUs) or "modelopt" (per-tensor
    # scales, static calibrated activation scales: vLLM, also its CPU build; SGLang cannot update it)
    fp8_format: str = "block"
    # fp8: the FP8 HF checkpoint the engines start from (e.g. `mmr1-mega convert mcore-to-hf --quantize fp8`);
    # empty: written from model.hf_path into train.output_dir/engine-fp8 at start (modelopt: calibrated on
    # fp8_calib_prompts training prompts)
    fp8_checkpoint: str = ""
    fp8_calib_prompts: int = 64

    def validate(self) -> None:
        if self.engine not in ("local", "sglang", "vllm"):
            raise ConfigError(f"rollout.engine must be local, sglang or vllm, got {self.engine!r}")
        if self.placement not in ("auto", "per_node", "rank0"):
            raise ConfigError(f"rollout.placement must be auto, per_node or rank0, got {self.placement!r}")
        if self.placement == "per_node" and self.engine == "local":
            raise ConfigError(
                "rollout.placement=per_node needs server engines (sglang / vllm): the local engine lives in rank 0"
            )
        if self.async_steps not in (0, 1):
            raise ConfigError(
                f"rollout.async_steps must be 0 (on-policy) or 1 (one step off-policy), got {self.async_steps}"
            )
        if self.async_steps and self.colocate and self.engine != "local":
            raise ConfigError(
                "rollout.async_steps=1 generates while the actor trains: colocated engines share the actor's "
                "GPUs and cannot; set rollout.colocate=false (engines on GPUs of their own) or async_steps=0"
            )
        if self.weight_transfer not in ("auto", "reload", "ipc"):
            raise ConfigError(
                f"rollout.weight_transfer must be auto, reload or ipc, got {self.weight_transfer!r}"
            )
        if self.weight_transfer == "ipc" and not self.colocate:
            raise ConfigError(
                "rollout.weight_transfer=ipc needs rollout.colocate=true (the servers on the actor's GPUs)"
            )
        if self.weight_dtype not in ("bf16", "fp8"):
            raise ConfigError(f"rollout.weight_dtype must be bf16 or fp8, got {self.weight_dtype!r}")
        if self.fp8_format not in ("block", "modelopt"):
            raise ConfigError(f"rollout.fp8_format must be block or modelopt, got {self.fp8_format!r}")
        if self.weight_dtype == "fp8" and self.engine == "sglang" and self.fp8_format != "block":
            raise ConfigError(
                "rollout.fp8_format=modelopt: SGLang 0.5.23 loads it but re-creates its layers after loading, so "
                "weight updates do not reach them; use fp8_format=block with SGLang (or rollout.engine=vllm)"
            )
        if self.fp8_calib_prompts < 1:
            raise ConfigError(f"rollout.fp8_calib_prompts must be >= 1, got {self.fp8_calib_prompts}")
        if self.n_samples < 2:
            raise ConfigError("rollout.n_samples must be >= 2: GRPO normalises rewards within a group")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("rollout.temperature must be >= 0 and rollout.top_p in (0, 1]")
        if self.max_new_tokens < 1:
            raise ConfigError("rollout.max_new_tokens must be >= 1")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ConfigError(
                f"rollout.stop_token_ids must be token ids (ints >= 0), got {self.stop_token_ids}"
            )
        if self.server_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ConfigError("rollout.server_timeout_s and rollout.request_timeout_s must be > 0")
        if self.max_inflight_per_engine < 1:
            raise ConfigError(
                f"rollout.max_inflight_per_engine must be >= 1 (prompt groups in flight per engine server), "
                f"got {self.max_inflight_per_engine}"
            )
        if self.router and self.engine != "sglang":
            raise ConfigError(
                f"rollout.router=true puts sglang-router in front of SGLang servers; rollout.engine is "
                f"{self.engine!r} (vLLM and local rollouts use the trainer's own dispatcher)"
            )
        if self.router_policy not in ROUTER_POLICIES:
            raise ConfigError(
                f"rollout.router_policy must be one of {ROUTER_POLICIES}, got {self.router_policy!r}"
            )
        if self.engine in ("sglang", "vllm") and not self.colocate:
            need = self.num_engines * self.engine_tensor_parallel
            if len(self.engine_gpus) != need or len(set(self.engine_gpus)) != need:
                raise ConfigError(
                    f"rollout.colocate=false needs rollout.engine_gpus: {need} distinct GPU ids "
                    f"(num_engines {self.num_engines} x engine_tensor_parallel {self.engine_tensor_parallel}), "
                    f"got {self.engine_gpus}"
                )
            for i in range(self.num_engines):
                mine = self.engine_gpus[
                    i * self.engine_tensor_parallel : (i + 1) * self.engine_tensor_parallel
                ]
                if mine != list(range(mine[0], mine[0] + len(mine))):
                    raise ConfigError(f"rollout.engine_gpus: engine {i} gets {mine}, not consecutive GPU ids")


# sglang-router 0.3.2's --policy choices
ROUTER_POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


@dataclass
class TrainConfig:
    """The GRPO loop. prompts_per_step prompts x rollout.n_samples responses make one step's batch."""

    steps: int = 100
    prompts_per_step: int = 128
    micro_batch_size: int = 4
    # > 0: micro-batches by token count instead of micro_batch_size rows, each of at most this many tokens:
    # packed, a balanced partition of the samples' lengths (prompt + response) into the fewest micro-batches;
    # right-padded, rows x the longest sample (longest first, similar lengths together). The loss is
    # normalised over the whole mini-batch as before (loss.loss_agg_mode), whatever the split
    max_tokens_per_micro_batch: int = 0
    # each micro-batch's samples in one row for the actor's log-prob and train passes (THD packing with
    # transformer-engine, a block-diagonal mask otherwise): no compute on padding
    pack_sequences: bool = False
    ppo_epochs: int = 1
    ppo_mini_batches: int = 1
    seed: int = 1234
    val_every_steps: int = 10
    val_max_prompts: int = 512
    val_temperature: float = 0.0  # 0: greedy
    # > 0: also val_samples samples per validation prompt at rollout.temperature: val/pass1, the mean accuracy
    # over them (pass@1 estimated from several samples, with its standard error val/pass1_se)
    val_samples: int = 0
    # > 0: stop after the step in which every generated response token so far (training rollouts of every
    # sampling round + VAS refresh rollouts; rollout/total_tokens) reaches this budget; validate and save there
    max_rollout_tokens: int = 0
    # DAPO's dynamic sampling: groups whose rewards do not vary (all right or all wrong: zero advantage) are
    # dropped before the loss, and more prompts are drawn from the same mixture (VAS-weighted and uniform)
    # to fill prompts_per_step, in at most max_sampling_rounds generation rounds per step
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 4
    output_dir: str = "outputs/run"
    world_size: int = 0  # ranks to fork when not started by torchrun; 0 = tensor_parallel x pipeline_parallel
    # forked ranks (not torchrun) laid out as this many "nodes" on this machine: multi-node code on one host
    nodes: int = 1
    # the actor's collectives (NCCL on GPU) run in lockstep: a rank waiting longer than this has a peer
    # that hangs or died
    collective_timeout_s: float = 1800.0
    # how long the other ranks wait for a phase only rank 0 works in (engine start-up, VAS refresh,
    # rollouts, validation, trainer state): distributed/comm.py's rule
    rank0_phase_timeout_s: float = 10800.0

    def micro_batching(self) -> dict:
        """The actor's micro-batching arguments (MegatronActor)."""
        return dict(
            micro_batch_size=self.micro_batch_size,
            max_tokens_per_micro_batch=self.max_tokens_per_micro_batch,
            pack_sequences=self.pack_sequences,
        )

    def validate(self) -> None:
        for name in (
            "steps",
            "prompts_per_step",
            "micro_batch_size",
            "ppo_epochs",
            "ppo_mini_batches",
            "max_sampling_rounds",
            "nodes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1")
        if self.collective_timeout_s <= 0 or self.rank0_phase_timeout_s <= 0:
            raise ConfigError("train.collective_timeout_s and train.rank0_phase_timeout_s must be > 0")
        if self.max_tokens_per_micro_batch < 0:
            raise ConfigError(
                f"train.max_tokens_per_micro_batch must be >= 0 (0: micro_batch_size rows), got "
                f"{self.max_tokens_per_micro_batch}"
            )
        if self.val_samples < 0 or self.max_rollout_tokens < 0:
            raise ConfigError(
                f"train.val_samples ({self.val_samples}) and train.max_rollout_tokens ({self.max_rollout_tokens}) "
                "must be >= 0 (0 switches them off)"
            )


@dataclass
class SFTConfig:
    """Cold-start supervised fine-tuning on the same actor (MMR1 Sec. 3: SFT before RL)."""

    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-5
    warmup_steps: int = 10
    lr_decay_style: str = "cosine"
    val_every_steps: int = 50
    export_dir: str = ""  # where the SFT policy is written as an HF directory ("" = <output_dir>/sft_hf)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("sft.steps and sft.batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError("sft.lr must be > 0")


@dataclass
class CheckpointConfig:
    save_every_steps: int = 50
    keep_last: int = 2
    resume: str = ""  # "", "auto" (latest complete checkpoint in train.output_dir) or a path

    def validate(self) -> None:
        if self.keep_last < 1:
            raise ConfigError("checkpoint.keep_last must be >= 1")


@dataclass
class LogConfig:
    wandb: str = "auto"  # auto: online with WANDB_API_KEY, offline otherwise; or online / offline / off
    wandb_project: str = "mmr1-mega"
    tensorboard: bool = True
    console_every_steps: int = 1
    # rollout/logp_mismatch_*: the engine's log-probs of its samples vs the actor's (algo/mismatch.py); at a
    # sampling temperature other than 1 this costs one more actor forward per step
    engine_mismatch: bool = True

    def validate(self) -> None:
        if self.wandb not in ("auto", "online", "offline", "off"):
            raise ConfigError(f"log.wandb must be auto, online, offline or off, got {self.wandb!r}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    vas: VASConfig = field(default_factory=VASConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> Config:
        """Validate every section; raises ConfigError (ValueError) naming the key. Returns self."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            try:
                section.validate()
            except ConfigError:
                raise
            except ValueError as e:
                raise ConfigError(f"{f.name}: {e}") from None
        if self.train.micro_batch_size > self.train.prompts_per_step * self.rollout.n_samples:
            raise ConfigError(
                "train.micro_batch_size is larger than a step's batch (prompts_per_step x n_samples)"
            )
        budget = self.train.max_tokens_per_micro_batch
        longest = self.data.max_prompt_len + self.rollout.max_new_tokens
        if 0 < budget < longest:
            raise ConfigError(
                f"train.max_tokens_per_micro_batch ({budget}) is below the longest sequence a step can hold: "
                f"data.max_prompt_len + rollout.max_new_tokens = {longest}; raise it (or lower those)"
            )
        if self.loss.tis_cap is not None and self.rollout.temperature != 1.0:
            raise ConfigError(
                f"loss.tis_cap needs rollout.temperature=1.0 (got {self.rollout.temperature}): the engines "
                "return raw (pre-temperature) log-probs, which are the sampling policy's only at temperature 1"
            )
        # the other ranks wait for rank 0's rollouts and engine start-up: that wait must outlast both
        wait = self.train.rank0_phase_timeout_s
        for key in ("request_timeout_s", "server_timeout_s"):
            if getattr(self.rollout, key) >= wait:
                raise ConfigError(
                    f"rollout.{key} ({getattr(self.rollout, key):.0f} s) must be below "
                    f"train.rank0_phase_timeout_s ({wait:.0f} s): the other ranks would give up first"
                )
        return self

    def check_against_model(self, hf_config) -> None:
        """Checks that need the model's HF config: parallel layout vs heads, query groups, layers, vocab."""
        from mmr1_mega.models.qwen_vl.bridge import check_layout
        from mmr1_mega.models.registry import get_family

        get_family(hf_config.model_type)
        p = self.parallel
        try:
            check_layout(hf_config, p.tensor_parallel, p.pipeline_parallel, p.sequence_parallel)
        except ValueError as e:
            raise ConfigError(f"parallel: {e}") from None
        if self.rollout.weight_dtype == "fp8" and self.rollout.fp8_format == "block":
            from mmr1_mega.quant.fp8 import FP8Error, check_block_shapes, decoder_linear_shapes

            try:
                check_block_shapes(decoder_linear_shapes(hf_config), self.rollout.engine_tensor_parallel)
            except FP8Error as e:
                raise ConfigError(f"rollout.fp8_format=block: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------
# dict / YAML / override plumbing
# ------------------------------------------------------------------------------------------------------
def _unknown_key(key: str, where: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"unknown config key {where + key!r}{hint}")


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_check_type(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(hint) or (Any, Any)
        return {k: _check_type(v, vt, key) for k, v in value.items()}
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, where, names)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, where + key)
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated. Raises ConfigError / FileNotFoundError."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
    for o in overrides or []:
        apply_override(data, o)
    return from_dict(Config, data).validate()


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the full, resolved configuration as YAML (saved next to every run and checkpoint)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
