"""Qwen3-VL (dense) as one pipeline stage: transformers' vision tower + megatron-core GPTModel.

What Qwen3-VL adds to Qwen2.5-VL's stage (models/qwen_vl/model.py), as transformers 5.24 computes it
(modeling_qwen3_vl.py):
- the language model: per-head q / k RMSNorm, no qkv bias, an explicit head_dim (bridge.py), and interleaved
  multimodal rope (rotary.InterleavedMRoPE, swapped into the GPTModel);
- DeepStack: the vision tower also returns one feature per tapped vision block
  (vision_config.deepstack_visual_indexes, each through its own merger); feature j is added to the output of
  decoder layer j (j < number of taps) at the image-token positions. Here the features travel as one dense
  tensor [s, b, k, h] (zero off image tokens; scattered along the sequence like the hidden states under
  sequence parallelism) in the decoder's `context` argument, which megatron's TransformerBlock hands to every
  layer (and keeps for activation recomputation per micro-batch); DeepStackLayer adds its slab.
  When a DeepStack layer sits on a later pipeline stage, the features ride in the activation that stages
  send each other: a stage's output is [s, b, h * (1 + k)] (hidden states, then the k slabs; zeros for a
  micro-batch without images) and the next stage splits it in set_input_tensor. Gradients flow back the same
  way to the vision tower's DeepStack mergers on the first stage. megatron-core exchanges the activation's
  shape per micro-batch (variable_seq_lengths), so the wider activation needs nothing else.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer

from mmr1_mega.models.qwen3_vl.rotary import InterleavedMRoPE
from mmr1_mega.models.qwen_vl.model import QwenVLModel
from mmr1_mega.models.spec import decoder_block_spec


class DeepStackLayer(TransformerLayer):
    """A decoder layer that adds DeepStack feature `layer_number - 1` (from `context`) to its output."""

    def __init__(self, *args, deepstack_layers: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.deepstack_layers = deepstack_layers

    def forward(self, *args, **kwargs):
        hidden_states, context = super().forward(*args, **kwargs)
        j = self.layer_number - 1  # global, 0-based
        if context is not None and j < self.deepstack_layers:
            hidden_states = hidden_states + context[:, :, j].to(hidden_states.dtype)
        return hidden_states, context


class Qwen3VLModel(QwenVLModel):
    """One pipeline stage of a dense Qwen3-VL model (see the module doc)."""

    def __init__(
        self, config, hf_config, vision_class, pre_process=True, post_process=True, num_layers_here=None
    ):
        self.deepstack_layers = len(hf_config.vision_config.deepstack_visual_indexes)
        super().__init__(config, hf_config, vision_class, pre_process, post_process, num_layers_here)
        # DeepStack layers beyond the first stage's: the features travel with the activation (module doc)
        pp = config.pipeline_model_parallel_size
        self.carry_deepstack = pp > 1 and self.deepstack_layers > config.num_layers // pp
        self._received_deepstack = None
        rope = self.language_model.rotary_pos_emb
        self.language_model.rotary_pos_emb = InterleavedMRoPE(
            kv_channels=config.kv_channels,
            rotary_percent=1.0,
            rotary_base=hf_config.text_config.rope_parameters["rope_theta"],
            cp_group=getattr(rope, "cp_group", None),
        ).to(rope.inv_freq.device)

    def _decoder_spec(self, config, num_layers_here):
        return decoder_block_spec(
            config,
            num_layers_here,
            layer_module=DeepStackLayer,
            layer_params={"deepstack_layers": self.deepstack_layers},
        )

    def embed(self, input_ids, pixel_values, image_grid_thw, image_mask=None):
        """Token embeddings with image features on the image tokens [s, b, h], and the DeepStack features
        as a dense [s, b, k, h] tensor (None without images); both scattered along the sequence with SP."""
        embeddings, out, image_mask = self.embed_tokens_and_images(
            input_ids, pixel_values, image_grid_thw, image_mask
        )
        deepstack = None
        if out is not None:
            stacked = torch.stack(list(out.deepstack_features), dim=1).to(embeddings.dtype)  # [n, k, h]
            deepstack = embeddings.new_zeros(*input_ids.shape, *stacked.shape[1:])  # [b, s, k, h]
            deepstack[image_mask] = stacked
            deepstack = self.sequence_first(deepstack)
        return self.decoder_input(embeddings), deepstack

    def forward(
        self,
        input_ids,
        position_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        labels=None,
        image_mask=None,
        packed_seq_params=None,
    ):
        """As QwenVLModel.forward; the DeepStack features reach the decoder layers as `context`, and the next
        pipeline stage with the activation when it holds DeepStack layers."""
        decoder_input = deepstack = None
        if self.pre_process:
            decoder_input, deepstack = self.embed(input_ids, pixel_values, image_grid_thw, image_mask)
            if self.carry_deepstack and deepstack is None:  # no images in this micro-batch: zero slabs
                s, b, h = decoder_input.shape
                deepstack = decoder_input.new_zeros(s, b, self.deepstack_layers, h)
        else:
            deepstack, self._received_deepstack = self._received_deepstack, None
        out = self.language_model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            decoder_input=decoder_input,
            labels=labels,
            packed_seq_params=packed_seq_params,
            extra_block_kwargs=None if deepstack is None else {"context": deepstack},
        )
        if self.carry_deepstack and not self.post_process:
            out = torch.cat([out, deepstack.flatten(2).to(out.dtype)], dim=-1)
        return out

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hand-off: split the received activation into hidden states and DeepStack slabs."""
        if not self.carry_deepstack or self.pre_process:
            return super().set_input_tensor(input_tensor)
        tensor = input_tensor[0] if isinstance(input_tensor, list) else input_tensor
        if tensor is None:
            return super().set_input_tensor(input_tensor)
        h = self.config.hidden_size
        self._received_deepstack = tensor[..., h:].unflatten(-1, (self.deepstack_layers, h))
        super().set_input_tensor([tensor[..., :h].contiguous()])
