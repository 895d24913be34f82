"""The megatron actor: a TP x PP x DP Qwen-VL policy (or frozen reference) with logprobs and a GRPO step.

Every rank of the job holds one MegatronActor. Batches given to it are this data-parallel rank's share;
results computed on the last pipeline stage (log-probabilities, loss metrics) stay there, and
`reduce_metrics` brings metrics to every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from mmr1_mega.actor.batch import RolloutBatch
from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.algo.loss import tis_weights
from mmr1_mega.distributed.comm import comm_device
from mmr1_mega.distributed.cpu import cuda_absent, device
from mmr1_mega.models.build import build_model
from mmr1_mega.models.qwen_vl.bridge import DTYPES
from mmr1_mega.models.qwen_vl.packing import PackedRow, choose_rows, pack, unpack_padded
from mmr1_mega.models.spec import implementations, transformer_engine_usable
from mmr1_mega.models.weights import iter_hf_weights, load_hf_weights
from mmr1_mega.ops.grpo import grpo_loss, loss_implementation
from mmr1_mega.perf.flops import lm_head_dim, lm_params_matmul

log = logging.getLogger("mmr1_mega")
LOGPROB_CHUNK_MB = 256.0


def token_logprobs(
    vocab_parallel_logits: torch.Tensor,
    input_ids: torch.Tensor,
    temperature: float,
    chunk_mb: float = LOGPROB_CHUNK_MB,
) -> torch.Tensor:
    """log p(input_ids[:, t] | tokens < t) from vocab-parallel logits [b, s, v/TP]; position 0 gets 0.

    Logits are divided by the sampling temperature, so the log-probabilities are those of the distribution
    the rollout engine sampled from (as verl / slime do). Differentiable; fp32.

    Memory: the fp32 (and tempered) copy of the logits and the softmax that megatron's vocab-parallel
    cross-entropy keeps for backward would each be [b, s, v/TP] fp32 (tens of GB at 7B widths with long
    responses). Here they exist for one chunk of positions at a time (at most chunk_mb of fp32 logits):
    forward keeps nothing but its inputs, and backward recomputes each chunk and writes its gradient into
    one tensor of the logits' own dtype. Values and gradients are those of the unchunked computation
    (each position's log-softmax is independent of the others); the cross-entropy is megatron's own.
    """
    return _ChunkedTokenLogprobs.apply(vocab_parallel_logits, input_ids, float(temperature), float(chunk_mb))


def _chunk_nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    # always a copy: megatron's cross-entropy works in place on its input (subtracts the max, exponentiates)
    x = logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if temperature != 1.0:
        x = x / temperature if x.requires_grad else x.div_(temperature)
    return tensor_parallel.vocab_parallel_cross_entropy(x, targets.contiguous())


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """token_logprobs' autograd: position t's logits score token t+1, one chunk of positions at a time."""

    @staticmethod
    def _chunks(logits: torch.Tensor, chunk_mb: float) -> list[tuple[int, int]]:
        b, s, v = logits.shape
        n = s - 1  # the last position predicts nothing
        per_position = max(1, b * v * 4)  # fp32 bytes of one position across the batch
        step = n if math.isinf(chunk_mb) else max(1, int(chunk_mb * 2**20 // per_position))
        return [(a, min(a + step, n)) for a in range(0, n, max(step, 1))]

    @staticmethod
    def forward(ctx, logits, input_ids, temperature, chunk_mb):
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
        with torch.no_grad():
            for a, b in _ChunkedTokenLogprobs._chunks(logits, chunk_mb):
                out[:, a + 1 : b + 1] = -_chunk_nll(logits[:, a:b], input_ids[:, a + 1 : b + 1], temperature)
        ctx.save_for_backward(logits, input_ids)
        ctx.temperature, ctx.chunk_mb = temperature, chunk_mb
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, input_ids = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for a, b in _ChunkedTokenLogprobs._chunks(logits, ctx.chunk_mb):
            with torch.enable_grad():
                x = logits[:, a:b].detach().requires_grad_()
                nll = _chunk_nll(x, input_ids[:, a + 1 : b + 1], ctx.temperature)
                torch.autograd.backward(-nll, grad_out[:, a + 1 : b + 1].float())
            grad[:, a:b] = x.grad
        return grad, None, None, None


def _to_device(mb: RolloutBatch) -> dict:
    dev = device()
    return dict(
        input_ids=mb.input_ids.to(dev),
        position_ids=mb.position_ids.to(dev),
        pixel_values=None if mb.pixel_values is None else mb.pixel_values.to(dev),
        image_grid_thw=None if mb.image_grid_thw is None else mb.image_grid_thw.to(dev),
        image_mask=None if mb.image_mask is None else mb.image_mask.to(dev),
    )


def _packed_to_device(mb: RolloutBatch, row: PackedRow) -> dict:
    dev = device()
    return _to_device(mb) | dict(
        input_ids=row.input_ids.to(dev),
        position_ids=row.position_ids.to(dev),
        image_mask=None if row.image_mask is None else row.image_mask.to(dev),
        attention_mask=None if row.attention_mask is None else row.attention_mask.to(dev),
        packed_seq_params=row.packed_seq_params(),
    )


class MegatronActor:
    """Policy (trainable) or reference (frozen) model on the current megatron layout.

    hf_config: the model's transformers config; weights_dir: HF directory to load weights from.
    train: build DDP + optimizer + LR schedule. optim: mmr1_mega.config.OptimConfig (train only).
    Micro-batches: micro_batch_size samples each, or, with max_tokens_per_micro_batch > 0, micro-batches of
    at most that many tokens (RolloutBatch.partition: real tokens when packed, rows x longest when padded).
    pack_sequences: each micro-batch's samples packed (models.qwen_vl.packing: one THD row with
    transformer-engine; otherwise block-diagonal rows whose width minimises model FLOPs) instead of one
    right-padded row per sample.
    """

    def __init__(
        self,
        hf_config,
        weights_dir: str,
        dtype: str = "bf16",
        sequence_parallel: bool = False,
        recompute: bool = False,
        train: bool = True,
        optim=None,
        use_distributed_optimizer: bool = False,
        total_steps: int = 1,
        micro_batch_size: int = 4,
        max_tokens_per_micro_batch: int = 0,
        pack_sequences: bool = False,
    ):
        self.hf_config = hf_config
        self.micro_batch_size = micro_batch_size
        self.max_tokens = max_tokens_per_micro_batch
        self.pack = pack_sequences
        self.thd = pack_sequences and transformer_engine_usable()
        # real tokens and computed positions (padding included) of the last logprobs / train pass
        self.last_pass: dict[str, int] = {}
        # block-diagonal packing's cost model (packing.choose_rows): model FLOPs per position of a row
        # (every weight matmul) and per (query, key) pair that dense attention computes (scores and A V)
        text = hf_config.text_config
        self._row_costs = (
            2.0 * lm_params_matmul(text),
            4.0 * text.num_attention_heads * lm_head_dim(text) * text.num_hidden_layers,
        )
        model, self.family = build_model(
            hf_config, sequence_parallel=sequence_parallel, dtype=dtype, recompute=recompute
        )
        self.table = self.family.weight_table(hf_config)
        if train and dist.get_rank() == 0:
            log.info("megatron implementations: %s", implementations())
        load_hf_weights(model, weights_dir, self.table)
        self.config = model.config
        self._offloaded: set[str] = set()
        self._host_params: list = []
        self.seq_multiple = ps.get_tensor_model_parallel_world_size() if self.config.sequence_parallel else 1
        self.train_mode = train
        if not train:
            for p in model.parameters():
                p.requires_grad_(False)
            self.model = model.eval()
            return
        self.model = DistributedDataParallel(
            self.config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                use_distributed_optimizer=use_distributed_optimizer,
                overlap_grad_reduce=False,
            ),
            model,
        )
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.no_sync_func = self.model.no_sync
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=optim.lr,
                min_lr=optim.min_lr,
                weight_decay=optim.weight_decay,
                adam_beta1=optim.adam_beta1,
                adam_beta2=optim.adam_beta2,
                adam_eps=optim.adam_eps,
                clip_grad=optim.clip_grad,
                bf16=dtype == "bf16",
                fp16=dtype == "fp16",
                params_dtype=DTYPES[dtype],
                use_distributed_optimizer=use_distributed_optimizer,
            ),
            [self.model],
        )
        self.clip_grad = optim.clip_grad
        decay_steps = max(total_steps - optim.warmup_steps, 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if optim.warmup_steps else optim.lr,
            max_lr=optim.lr,
            min_lr=optim.min_lr if optim.lr_decay_style != "constant" else optim.lr,
            lr_warmup_steps=optim.warmup_steps,
            lr_decay_steps=decay_steps + optim.warmup_steps,
            lr_decay_style=optim.lr_decay_style,
            start_wd=optim.weight_decay,
            end_wd=optim.weight_decay,
            wd_incr_steps=1,
            wd_incr_style="constant",
        )

    # -------------------------------------------------------------------------------------------- forward
    def _run(
        self, batch: RolloutBatch, parts: list[list[int]], loss_fn, forward_only: bool, temperature: float
    ) -> list:
        """One pipeline-scheduled pass over the micro-batches `parts` (sample indices of `batch`; packing
        into block-diagonal rows reorders each part in place to the order its rows hold the samples).

        loss_fn(mb, logp) gets each micro-batch (right-padded, trimmed) and its per-token log-probs [n, S]
        at `temperature`, aligned with mb.input_ids, whether the forward ran on padded or packed rows.
        """
        micro = []
        real = computed = 0
        lengths = batch.lengths
        for k, idx in enumerate(parts):
            rows = None
            if self.pack and not self.thd:  # block-diagonal rows: samples ordered as the rows hold them
                width, plan = choose_rows([lengths[i] for i in idx], self.seq_multiple, *self._row_costs)
                parts[k] = idx = [idx[i] for row in plan for i in row]
                rows = [len(row) for row in plan]
            mb = batch.select(idx).trim(self.seq_multiple)
            real += sum(mb.lengths)
            if self.pack:
                row = pack(
                    mb.input_ids,
                    mb.position_ids,
                    mb.lengths,
                    self.seq_multiple,
                    mb.image_mask,
                    thd=self.thd,
                    rows=rows,
                    width=None if self.thd else width,
                )
                micro.append((_packed_to_device(mb, row), mb, row))
                computed += row.total
            else:
                micro.append((_to_device(mb), mb, None))
                computed += mb.input_ids.numel()
        self.last_pass = {"tokens": real, "positions": computed, "micro_batches": len(micro)}
        # micro-batches differ in length: variable_seq_lengths (TransformerConfig) lets the pipeline
        # schedule exchange shapes per micro-batch

        def logp_then_loss(mb, row, logits):
            if row is None:
                logp = token_logprobs(logits, mb.input_ids.to(logits.device), temperature)
            else:
                packed = token_logprobs(logits, row.input_ids.to(logits.device), temperature)
                logp = unpack_padded(packed, row, mb.seq_len, skip_first=True)
            return loss_fn(mb, logp)

        def forward_step(data_iterator, model):
            inputs, mb, row = next(data_iterator)
            out = model(**inputs)
            return out, partial(logp_then_loss, mb, row)

        seq = max(inputs["input_ids"].shape[1] for inputs, _, _ in micro)
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro),
            model=[self.model],
            num_microbatches=len(micro),
            seq_length=seq,
            micro_batch_size=max(inputs["input_ids"].shape[0] for inputs, _, _ in micro),
            forward_only=forward_only,
        )

    def _partition(self, batch: RolloutBatch) -> list[list[int]]:
        return batch.partition(self.micro_batch_size, self.max_tokens, packed=self.pack)

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor | None:
        """Per-token log-probs [B, S] (aligned with input_ids) on the last pipeline stage; None elsewhere."""
        was_training = self.model.training
        self.model.eval()

        def loss_fn(mb, logp):
            return logp.new_zeros(()), {"logp": logp.detach().cpu()}

        parts = self._partition(batch)
        outputs = self._run(batch, parts, loss_fn, forward_only=True, temperature=temperature)
        self.model.train(was_training)
        if not ps.is_pipeline_last_stage():
            return None
        logp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for idx, out in zip(parts, outputs):
            width = min(out["logp"].shape[1], logp.shape[1])  # a micro-batch may be padded to the TP size
            logp[idx, :width] = out["logp"][:, :width]
        return logp

    # ------------------------------------------------------------------------------------------- training
    def train_step(
        self, batch: RolloutBatch, loss_cfg: GRPOLossConfig, temperature: float = 1.0
    ) -> dict[str, float]:
        """One optimizer step of GRPO on this DP rank's batch (advantages, old_logp, ref_logp filled in).

        The loss is normalised over the whole step's batch across data-parallel ranks (token count for
        token-mean, sequence count otherwise), whatever the micro-batching. A non-finite grad norm skips
        the update: weights and optimizer state stay unchanged. Returns metrics (on every rank).
        """
        per_token = loss_cfg.loss_agg_mode == "token-mean"
        if loss_cfg.loss_agg_mode == "seq-mean-token-sum-norm" and loss_cfg.norm_length is None:
            # L = "the padded width" is the whole step's (every DP rank's rows as one padded batch), not a
            # micro-batch's: the loss must not depend on how the batch is split
            width = torch.tensor([float(batch.seq_len)], device=comm_device(ps.get_data_parallel_group()))
            dist.all_reduce(width, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
            loss_cfg = dataclasses.replace(loss_cfg, norm_length=int(width.item()))

        tis = loss_cfg.tis_cap is not None
        if tis and batch.engine_logp is None:
            raise ValueError("loss.tis_cap needs the rollout engine's log-probs in the batch (engine_logp)")

        def loss(mb, logp, normaliser):
            dev = logp.device
            mask = mb.response_mask.to(dev).bool()
            behaviour = mb.engine_logp.to(dev) if tis else None
            inputs = [mb.old_logp.to(dev)] + ([] if mb.ref_logp is None else [mb.ref_logp.to(dev)])
            inputs += [behaviour] if tis else []
            # a NaN / inf input must skip the step whatever the loss implementation does with it
            bad = torch.stack([~torch.isfinite(torch.where(mask, t, 0.0)).all() for t in inputs])
            bad = bad.any() | ~torch.isfinite(mb.advantages).all()
            value, metrics = grpo_loss(
                logp,
                mb.old_logp.to(dev),
                None if mb.ref_logp is None else mb.ref_logp.to(dev),
                mb.response_mask.to(dev),
                None,
                None,
                loss_cfg,
                advantages=mb.advantages.to(dev),
                loss_normaliser=normaliser,
                behaviour_logp=behaviour,
            )
            if tis:  # how far the engine's policy is from the old one, over this micro-batch's tokens
                w = tis_weights(mb.old_logp.to(dev), torch.where(mask, behaviour, 0.0), loss_cfg)[mask]
                metrics = metrics | {
                    "tis_weight_mean": w.mean() if w.numel() else w.new_zeros(()),
                    "tis_capped_frac": (w >= loss_cfg.tis_cap).float().mean()
                    if w.numel()
                    else w.new_zeros(()),
                }
            return value, metrics | {"nonfinite_inputs": bad.float()}

        return self._optimizer_step(batch, loss, per_token, temperature)

    def sft_step(self, batch: RolloutBatch) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning: mean negative log-likelihood of the response
        tokens (response_mask) over the whole step's batch across DP ranks."""

        def loss(mb, logp, normaliser):
            mask = mb.response_mask.to(logp.device).float()
            nll = -(logp * mask).sum() / normaliser
            return nll, {"nll_token_mean": nll.detach() * normaliser / mask.sum().clamp(min=1)}

        return self._optimizer_step(batch, loss, True, 1.0)

    def _optimizer_step(
        self, batch: RolloutBatch, loss, per_token: bool, temperature: float
    ) -> dict[str, float]:
        t0 = time.perf_counter()
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        dp_group = ps.get_data_parallel_group()
        dp = ps.get_data_parallel_world_size()
        local = batch.response_mask.sum() if per_token else torch.tensor(len(batch))
        normaliser = local.to(comm_device(dp_group), torch.float64).clone()
        dist.all_reduce(normaliser, group=dp_group)
        normaliser = float(normaliser.clamp(min=1))
        parts = self._partition(batch)
        num_micro = len(parts)

        def loss_fn(mb, logp):
            value, metrics = loss(mb, logp, normaliser)
            # megatron divides each micro-batch loss by the number of micro-batches and DDP averages over
            # DP ranks; the loss is already normalised over the whole step, so undo both.
            return value * (num_micro * dp), {k: v.detach() for k, v in metrics.items()} | {
                "loss": value.detach()
            }

        outputs = self._run(batch, parts, loss_fn, forward_only=False, temperature=temperature)
        computed = self.last_pass
        # a non-finite loss can come with finite gradients (NaN inputs masked by max/where): check both,
        # agreeing across all ranks (the loss exists only on the last pipeline stage)
        bad_loss = torch.zeros(1, device=comm_device())
        if ps.is_pipeline_last_stage() and outputs:
            bad_loss[0] = float(
                not all(torch.isfinite(o["loss"]).all() for o in outputs)
                or any(float(o.get("nonfinite_inputs", 0)) > 0 for o in outputs)
            )
        dist.all_reduce(bad_loss, op=dist.ReduceOp.MAX)
        found_inf = self.optimizer.prepare_grads()
        grad_norm = float("nan") if found_inf else float(self.optimizer.get_grad_norm())
        skipped = bool(bad_loss.item()) or not math.isfinite(grad_norm)
        if not skipped:
            if self.clip_grad > 0:
                for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                    params = opt.get_parameters()
                    if params:
                        clip_grad_by_total_norm_fp32(params, max_norm=self.clip_grad, total_norm=grad_norm)
            self.optimizer.step_with_ready_grads()
            self.scheduler.step(increment=1)
        local_metrics = {}
        if ps.is_pipeline_last_stage() and outputs:
            for key in outputs[0]:
                values = torch.stack([o[key].float() for o in outputs])
                # micro-batch losses are parts of one step-wide normalised loss: their sum over micro-batches
                # and DP ranks is the loss (x dp here, as ranks are averaged below); other metrics are means
                local_metrics[key] = float(values.sum() * dp if key == "loss" else values.mean())
        # this rank's replica: real tokens trained on, and the share of computed positions that were padding
        # (averaged over ranks; the model-parallel ranks of a replica agree)
        local_metrics.update(
            train_tokens=float(computed["tokens"]),
            padding_fraction=1.0 - computed["tokens"] / max(computed["positions"], 1),
            micro_batches=float(computed["micro_batches"]),
        )
        metrics = reduce_metrics(local_metrics)
        metrics.update(
            loss_triton=float(loss_implementation(device()) != "eager-reference"),
            grad_norm=grad_norm,
            update_skipped=float(skipped),
            lr=self.optimizer.param_groups[0]["lr"],
            train_seconds=time.perf_counter() - t0,
        )
        return metrics

    # ------------------------------------------------------------------------------------- colocation
    def offload(self, keep_params: bool = False) -> None:
        """Free this rank's accelerator memory for a colocated engine (megatron's own helpers): gradient
        buffers freed, optimizer state to the host and, unless keep_params, parameters to (pinned) host
        memory. onload() undoes it; training after the round trip is exactly as without it."""
        cuda = not cuda_absent()
        if not keep_params and "params" not in self._offloaded:
            buffers = self._param_buffers()
            in_buffers = {id(p) for b in buffers for p in b.params}
            # what no parameter buffer holds (no distributed optimizer; the reference): one by one
            self._host_params = [
                p for p in self.model.parameters() if id(p) not in in_buffers and p.device.type != "cpu"
            ]
            for p in self._host_params:
                p.data = p.data.to("cpu", non_blocking=cuda)
            for buffer in buffers:
                buffer.offload_to_cpu(move_params=True, move_grads=False)
            self._offloaded.add("params")
        if self.train_mode and "grads+optimizer" not in self._offloaded:
            self.model.offload_grad_buffers(synchronize=cuda, empty_cache=False)
            self.optimizer.offload_to_cpu()
            self._offloaded.add("grads+optimizer")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def onload(self) -> None:
        """Bring back what offload() moved, before the actor computes again."""
        here = device()
        if "params" in self._offloaded:
            for p in self._host_params:
                p.data = p.data.to(here, non_blocking=here.type == "cuda")
            self._host_params = []
            for buffer in self._param_buffers():
                buffer.reload_from_cpu(move_params=True, move_grads=False)
        if "grads+optimizer" in self._offloaded:
            self.model.restore_grad_buffers(synchronize=False)
            self.optimizer.restore_from_cpu()
        if here.type == "cuda":
            torch.cuda.synchronize()
        self._offloaded.clear()

    def _param_buffers(self) -> list:
        if not self.train_mode:
            return []
        ddp = self.model
        every = [*ddp.buffers, *getattr(ddp, "expert_parallel_buffers", [])]
        # a buffer already in host memory has nothing to move (and megatron would pin a copy of it)
        return [b for b in every if b.param_data is not None and b.param_data.device.type != "cpu"]

    # --------------------------------------------------------------------------------------------- export
    def hf_weights(self, dtype: torch.dtype | None = None):
        """Stream this stage's weights with HF names (collective over the stage's TP group)."""
        return iter_hf_weights(self.model, self.table, dtype)


def reduce_metrics(local: dict[str, float]) -> dict[str, float]:
    """Average metric dicts over the ranks that computed them (empty dicts elsewhere); result on all ranks."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    keys = sorted({k for g in gathered for k in g})
    return {
        k: sum(g[k] for g in gathered if k in g) / max(1, sum(1 for g in gathered if k in g)) for k in keys
    }
