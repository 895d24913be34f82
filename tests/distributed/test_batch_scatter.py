"""scatter_batch: every rank gets exactly its data-parallel replica's rows of rank 0's batch, bit for bit,
at TP2 x DP2, PP2 x DP2 and DP4 (4 ranks on gloo)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks

pytestmark = pytest.mark.distributed


def _batch():
    from mmr1_mega.actor.batch import build_batch

    g = torch.Generator().manual_seed(5)
    prompts, responses, pixels, grids = [], [], [], []
    for i in range(6):  # samples with 0, 1 or 2 images and ragged lengths
        k = i % 3
        grid = [[1, 4, 4]] * k
        prompts.append([3] + [9, 9, 9, 9, 5] * k + list(range(10, 12 + i)))  # 4 merged patches per image
        responses.append(list(range(20, 23 + 2 * i)))
        pixels.append(torch.randn(16 * k, 12, generator=g) if k else None)
        grids.append(torch.tensor(grid) if k else None)
    b = build_batch(prompts, responses, pixels, grids, image_token_id=9, spatial_merge_size=2)
    b.rewards = torch.rand(6, generator=g)
    b.group_ids = torch.arange(3).repeat_interleave(2)
    b.advantages = torch.randn(6, generator=g)
    b.engine_logp = torch.randn(b.input_ids.shape, generator=g)
    b.extras["note"] = "kept"
    return b


def _scatter(tp, pp):
    from megatron.core import parallel_state as ps

    from mmr1_mega.distributed.batch_scatter import scatter_batch
    from mmr1_mega.distributed.init import initialize_model_parallel

    initialize_model_parallel(tp, pp)
    full = _batch()
    import torch.distributed as dist

    got = scatter_batch(full if dist.get_rank() == 0 else None)
    dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    want = full.select(range(r, len(full), dp))
    out = {}
    for name in (
        "input_ids",
        "attention_mask",
        "response_mask",
        "position_ids",
        "image_mask",
        "pixel_values",
        "image_grid_thw",
        "images_per_sample",
        "rewards",
        "group_ids",
        "advantages",
        "engine_logp",
    ):
        a, b = getattr(got, name), getattr(want, name)
        out[name] = (a is None and b is None) or (
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        )
    out["absent"] = got.old_logp is None and got.ref_logp is None
    out["extras"] = got.extras == {"note": "kept"}
    out["rows"] = (len(got), len(range(r, len(full), dp)))
    ps.destroy_model_parallel()
    return out


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2), (1, 1)])
def test_each_replica_receives_exactly_its_rows(tp, pp):
    results = run_on_ranks(_scatter, 4, tp, pp)
    for res in results:
        assert all(v for k, v in res.items() if k != "rows"), res
        assert res["rows"][0] == res["rows"][1] > 0
