"""The actor tests' batch and their reference: the same GRPO step done with transformers + torch AdamW."""

from __future__ import annotations

import torch

from mmr1_mega.actor.batch import build_batch
from mmr1_mega.algo import compute_advantages
from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.ops.grpo import grpo_loss
from tests.tolerances import fp32_forward_bound


def hf_logits(hf, batch):
    return hf(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        mm_token_type_ids=(batch.input_ids == hf.config.image_token_id).long(),
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
    ).logits


def hf_logp(hf, batch, temperature):
    logp = torch.log_softmax(hf_logits(hf, batch)[:, :-1].float() / temperature, -1)
    tok = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(tok, (1, 0))


def grpo_batch(hf, loss_cfg, temperature: float, seed: int = 0):
    """4 prompts x 2 responses of 2-8 tokens; prompts 1 and 3 carry an image (grid 1x4x4). Returns the batch
    (old / ref log-probs near the model's own), the model's log-probs and their derived tolerance."""
    cfg = hf.config
    g = torch.Generator().manual_seed(seed)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id]
    prompts, pixels, grids = [], [], []
    for i in range(4):
        text = torch.randint(8, 128, (5 + i,), generator=g).tolist()
        with_image = i % 2 == 1
        for _ in range(2):
            prompts.append(text[:2] + image + text[2:] if with_image else text)
            pixels.append(torch.randn(16, 1176, generator=g) if with_image else None)
            grids.append(torch.tensor([[1, 4, 4]]) if with_image else None)
    responses = [
        torch.randint(8, 128, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (8,), generator=g)
    ]
    batch = build_batch(
        prompts, responses, pixels, grids, cfg.image_token_id, cfg.vision_config.spatial_merge_size
    )
    batch.rewards = torch.rand(8, generator=g)
    batch.group_ids = torch.arange(8) // 2
    batch.advantages = compute_advantages(batch.rewards, batch.group_ids, loss_cfg)
    with torch.no_grad():
        logp0 = hf_logp(hf, batch, temperature)
        # log p = z_t / T - logsumexp(z / T): off by at most twice the logits' rounding bound, over T
        logp_atol = 2 * fp32_forward_bound(cfg.text_config, batch.seq_len) * hf_logits(hf, batch).abs().max()
        logp_atol = logp_atol.item() / temperature
    mask = batch.response_mask.bool()
    batch.old_logp = torch.where(mask, logp0 + 0.3 * torch.randn(logp0.shape, generator=g), 0.0)
    batch.ref_logp = torch.where(mask, logp0 + 0.2 * torch.randn(logp0.shape, generator=g), 0.0)
    return batch, logp0, logp_atol


def reference_step(hf, batch, loss_cfg, optim: dict, temperature: float) -> dict:
    """One GRPO step on the whole batch: transformers forward, the loss, global-norm clipping, torch AdamW.
    The model's weights are restored afterwards."""
    start_weights = {canonical_name(n): p.detach().clone() for n, p in hf.named_parameters()}
    hf.zero_grad()
    logp = hf_logp(hf, batch, temperature)
    loss, metrics = grpo_loss(
        logp, batch.old_logp, batch.ref_logp, batch.response_mask, None, None, loss_cfg,
        advantages=batch.advantages,
    )  # fmt: skip
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in hf.parameters())).item()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), optim["clip_grad"])
    clipped_grads = {canonical_name(n): p.grad.detach().clone() for n, p in hf.named_parameters()}
    opt = torch.optim.AdamW(hf.parameters(), lr=optim["lr"], weight_decay=0.0, eps=optim["adam_eps"])
    opt.step()
    ref_weights = {canonical_name(n): p.detach().clone() for n, p in hf.named_parameters()}
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_(start_weights[canonical_name(n)])
    hf.zero_grad()
    return dict(
        loss=loss.item(),
        grad_norm=grad_norm,
        ref_metrics=metrics,
        ref_weights=ref_weights,
        start_weights=start_weights,
        clipped_grads=clipped_grads,
    )


def merge_ranks(rank_results: list[dict], layouts, logp_shape) -> dict:
    """actor_workers.actor_step's per-rank results as one result per layout: the whole batch's log-probs
    (each DP replica's rows), the exported weights and the (rank-agreed) metrics."""
    merged = {}
    for name in layouts:
        logp_full = torch.zeros(logp_shape)
        weights, metrics = {}, None
        for r in rank_results:
            out = r[name]
            metrics = out["metrics"]
            if "logp" in out:
                idx, lp = out["logp"]
                logp_full[idx, : lp.shape[1]] = lp
            weights.update(out.get("weights", {}))
        merged[name] = dict(logp=logp_full, weights=weights, metrics=metrics)
    return merged
