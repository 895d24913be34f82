"""Code that runs inside the ranks of the distributed model tests (forked by mmr1_mega.distributed.launch)."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core import tensor_parallel  # noqa: E402
from megatron.core.distributed import (  # noqa: E402
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,  # noqa: E402
)
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402
from mmr1_mega.models.build import build_model  # noqa: E402
from mmr1_mega.models.tiny import megatron_inputs  # noqa: E402
from mmr1_mega.models.weights import iter_hf_weights, load_hf_weights  # noqa: E402

# name -> (tensor_parallel, pipeline_parallel, sequence_parallel)
LAYOUTS = {
    "tp1": (1, 1, False),
    "tp2": (2, 1, False),
    "pp2": (1, 2, False),
    "tp2pp2": (2, 2, False),
    "tp2sp": (2, 1, True),
}


_model_inputs = megatron_inputs


def _run(ddp, inputs, labels, mask, forward_only):
    def forward_step(data_iterator, model):
        out = model(**inputs, labels=None if forward_only else labels)

        def loss_func(output):
            if forward_only:
                full = tensor_parallel.gather_from_tensor_model_parallel_region(output)
                return output.sum() * 0, {"logits": full.detach()}
            loss = (output * mask).sum() / mask.sum()
            return loss, {"loss": loss.detach()}

        return out, loss_func

    b, s = inputs["input_ids"].shape
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[ddp],
        num_microbatches=1,
        seq_length=s,
        micro_batch_size=b,
        forward_only=forward_only,
    )


def logits_and_grads(
    hf_dir: str, batch: dict, labels: torch.Tensor, layouts: list[str], recompute: bool = False
) -> dict:
    """For each layout: full-vocab logits and loss (last stage) and HF-named grads (each stage).

    Only the first TP / DP rank of a stage reports, so the parent can merge the ranks' dicts.
    """
    hf_config = AutoConfig.from_pretrained(hf_dir)
    mask = batch["attention_mask"].float()
    results = {}
    for name in layouts:
        tp, pp, sp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        model, family = build_model(hf_config, sequence_parallel=sp, recompute=recompute)
        table = family.weight_table(hf_config)
        load_hf_weights(model, hf_dir, table)
        ddp = DistributedDataParallel(
            model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model
        )
        model.config.finalize_model_grads_func = finalize_model_grads
        model.config.no_sync_func = ddp.no_sync
        inputs = _model_inputs(hf_config, batch)
        reports = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
        out = {}
        logits = _run(ddp, inputs, labels, mask, forward_only=True)
        ddp.zero_grad_buffer()
        losses = _run(ddp, inputs, labels, mask, forward_only=False)
        if ps.is_pipeline_last_stage() and reports:
            out["logits"] = logits[0]["logits"]
            out["loss"] = float(losses[0]["loss"])
        grads = dict(iter_hf_weights(ddp, table, tensor_of=lambda p: p.main_grad))
        if reports:
            out["grads"] = grads
        results[name] = out
        dist.barrier()
    return results


def load_and_export(hf_dir: str, out: str, tp: int, pp: int, max_shard_mb: float) -> None:
    """Load an HF directory at TP x PP and export it back to HF."""
    from mmr1_mega.models.weights import export_hf

    hf_config = AutoConfig.from_pretrained(hf_dir)
    initialize_model_parallel(tp, pp)
    model, family = build_model(hf_config)
    table = family.weight_table(hf_config)
    load_hf_weights(model, hf_dir, table)
    export_hf(model, table, out, hf_dir, max_shard_mb=max_shard_mb)


def load_ckpt_logits(ckpt_dir: str, batch: dict) -> torch.Tensor:
    """Single rank: load a distributed checkpoint at TP=1 and return full logits."""
    from mmr1_mega.models.checkpoint import ASSETS, load_model_checkpoint

    hf_config = AutoConfig.from_pretrained(f"{ckpt_dir}/{ASSETS}")
    initialize_model_parallel(1, 1)
    model, _ = build_model(hf_config)
    load_model_checkpoint(model, ckpt_dir)
    model.eval()
    with torch.no_grad():
        return model(**_model_inputs(hf_config, batch))


def padded_vs_packed(hf_dir: str, batch: dict, layouts: list[str]) -> dict:
    """Logits of a right-padded batch and of the same samples packed (block-diagonal rows: one row of all
    samples, and rows as wide as the longest sample): per layout and form, max |difference| and the scale."""
    from mmr1_mega.models.qwen_vl.packing import pack, row_plan, row_width, unpack_rows

    hf_config = AutoConfig.from_pretrained(hf_dir)
    lengths = batch["attention_mask"].sum(1).tolist()
    out = {}
    for name in layouts:
        tp, pp, sp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        model, family = build_model(hf_config, sequence_parallel=sp)
        load_hf_weights(model, hf_dir, family.weight_table(hf_config))
        model.eval()
        inputs = _model_inputs(hf_config, batch)
        multiple = tp if sp else 1
        with torch.no_grad():
            padded = tensor_parallel.gather_from_tensor_model_parallel_region(model(**inputs))
        one_row = -(-sum(lengths) // multiple) * multiple
        plan = row_plan(lengths, row_width(lengths, multiple))
        order = [i for r in plan for i in r]
        with_images = [i for i in order if (inputs["input_ids"][i] == hf_config.image_token_id).any()]
        assert with_images == sorted(with_images), "the plan must keep the images in order for this test"
        forms = (
            ("one row", list(range(len(lengths))), [len(lengths)], one_row),
            ("rows", order, [len(r) for r in plan], None),
        )
        for form, order, rows, width in forms:
            ids, pos = inputs["input_ids"][order], inputs["position_ids"][:, order]
            row = pack(ids, pos, [lengths[i] for i in order], multiple, rows=rows, width=width)
            with torch.no_grad():
                packed = model(
                    row.input_ids, row.position_ids, row.attention_mask, inputs["pixel_values"],
                    inputs["image_grid_thw"],
                )  # fmt: skip
                packed = tensor_parallel.gather_from_tensor_model_parallel_region(packed)
            per_sample = unpack_rows(packed, row)
            diff = max(
                (per_sample[k] - padded[i, : lengths[i]]).abs().max().item() for k, i in enumerate(order)
            )
            out[f"{name} {form} ({row.input_ids.shape[0]}x{row.input_ids.shape[1]})"] = (
                diff,
                padded.abs().max().item(),
            )
        dist.barrier()
    return out


def real_width_forward(hf_dir: str, batch: dict, ref_logits: torch.Tensor, layouts: list[str]) -> dict:
    """Per layout: max |logits - reference| over real tokens, the reference's scale, and this rank's
    memory while loading and while running the forward (mmr1_mega.distributed.memory)."""
    import gc

    from mmr1_mega.distributed.memory import PhaseMemory

    hf_config = AutoConfig.from_pretrained(hf_dir)
    mask = batch["attention_mask"].bool()
    out = {}
    for name in layouts:
        tp, pp, sp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        gc.collect()
        mem = PhaseMemory()
        with mem.phase("load"):
            model, family = build_model(hf_config, sequence_parallel=sp)
            load_hf_weights(model, hf_dir, family.weight_table(hf_config))
        model.eval()
        with mem.phase("forward"), torch.no_grad():
            logits = model(**_model_inputs(hf_config, batch))
            full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        out[name] = {
            "diff": (full[mask] - ref_logits[mask]).abs().max().item(),
            "scale": ref_logits[mask].abs().max().item(),
            "memory": mem.report(),
            "rank": dist.get_rank(),
        }
        del model, logits, full
        dist.barrier()
    return out


def parameter_names(hf_dir: str) -> list[str]:
    """The megatron parameter names of a TP1 model of hf_dir (the local layer spec)."""
    hf_config = AutoConfig.from_pretrained(hf_dir)
    initialize_model_parallel(1, 1)
    model, _ = build_model(hf_config)
    return [n for n, _ in model.named_parameters()]


def thd_rope_vs_per_sample(lengths: list[int], positions: list, multiple: int, seed: int) -> float:
    """megatron-core's THD rope (the form transformer-engine runs use) on a packed row with mrope
    frequencies from the packed positions, against its bshd rope on each sample alone: max |difference|."""
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    from mmr1_mega.models.qwen_vl.packing import pack

    initialize_model_parallel(1, 1)
    g = torch.Generator().manual_seed(seed)
    heads, dim, section = 2, 16, [2, 3, 3]
    config = TransformerConfig(
        num_layers=1, hidden_size=heads * dim, num_attention_heads=heads, apply_rope_fusion=False
    )
    rope = MultimodalRotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=10000)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    pos = torch.zeros(3, len(lengths), width, dtype=torch.long)
    for i, p in enumerate(positions):
        pos[:, i, : lengths[i]] = torch.as_tensor(p)
    row = pack(ids, pos, lengths, multiple, thd=True)
    t = torch.randn(row.input_ids.shape[1], heads, dim, generator=g, dtype=torch.float64).float()
    packed = apply_rotary_pos_emb(t, rope(row.position_ids, section), config, cu_seqlens=row.cu_seqlens)
    diff, start = 0.0, 0
    for i, n in enumerate(lengths):
        alone = apply_rotary_pos_emb(t[start : start + n, None], rope(pos[:, i : i + 1, :n], section), config)
        diff = max(diff, (packed[start : start + n] - alone[:, 0]).abs().max().item())
        start += n
    return diff
