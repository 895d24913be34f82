"""Qwen3-VL's interleaved multimodal rope for megatron-core's GPTModel.

Qwen2-VL / Qwen2.5-VL give the temporal, height and width axes contiguous blocks of the rotary frequencies
(megatron-core's MultimodalRotaryEmbedding: sections [t, h, w] of each half). Qwen3-VL interleaves them
(transformers 5.24, modeling_qwen3_vl.py Qwen3VLTextRotaryEmbedding.recomposition_frequencies): frequency j of
the head_dim / 2 takes the height position where j % 3 == 1 and j < 3 * section[1], the width position where
j % 3 == 2 and j < 3 * section[2], and the temporal position otherwise; both halves of the rotate-half layout
are the same. No megatron-core version has this (0.16.1 and 0.19.2 only split contiguous sections), so the
model swaps its GPTModel's rotary module for this subclass, which GPTModel calls exactly as its own:
rotary_pos_emb(position_ids, mrope_section, cp_group=...) -> [s, b, 1, head_dim] angles.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import get_pos_emb_on_this_cp_rank
from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding


def interleaved_axis(half: int, section) -> torch.Tensor:
    """Which position axis (0 = t, 1 = h, 2 = w) each of the `half` rotary frequencies takes."""
    j = torch.arange(half)
    axis = torch.zeros(half, dtype=torch.long)
    axis[(j % 3 == 1) & (j < 3 * int(section[1]))] = 1
    axis[(j % 3 == 2) & (j < 3 * int(section[2]))] = 2
    return axis


class InterleavedMRoPE(MultimodalRotaryEmbedding):
    """MultimodalRotaryEmbedding with Qwen3-VL's interleaved t / h / w frequencies (see the module doc)."""

    def forward(self, position_ids: torch.Tensor, mrope_section, cp_group=None, **_unused) -> torch.Tensor:
        """position_ids [3, b, s] -> rotary angles [s, b, 1, head_dim] (both halves equal)."""
        if self.rotary_interleaved:
            raise ValueError("Qwen3-VL's rope is rotate-half (rotary_interleaved=False)")
        seq = position_ids.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        if self.seq_len_interpolation_factor is not None:
            seq = seq * (1 / self.seq_len_interpolation_factor)
        freqs = seq[..., None].float() * self.inv_freq.float()  # [3, b, s, half]: position x frequency
        axis = interleaved_axis(freqs.shape[-1], mrope_section).to(freqs.device)
        picked = freqs.gather(0, axis.expand(1, *freqs.shape[1:3], -1)).squeeze(0)  # [b, s, half]
        emb = torch.cat((picked, picked), dim=-1)[..., None, :].transpose(0, 1).contiguous()  # [s, b, 1, d]
        if cp_group is None:
            cp_group = self.cp_group
        if cp_group is not None and cp_group.size() > 1:
            emb = get_pos_emb_on_this_cp_rank(emb, 0, cp_group)
        return emb
