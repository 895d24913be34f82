"""Qwen2-VL / Qwen2.5-VL as one pipeline stage: HF vision tower (first stage) + megatron-core GPTModel."""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

from mmr1_mega.models.spec import decoder_block_spec


class QwenVLModel(MegatronModule):
    """One pipeline stage of a Qwen-VL model.

    The vision tower is the transformers module itself, replicated on every TP rank of the first stage:
    it is small next to the language model, and its outputs are identical on every TP rank, so the
    gradients reaching it are complete on each rank (TP all-reduces the input gradient; with sequence
    parallelism the scatter's backward all-gathers it) and need no extra reduction across TP.

    The language model is a megatron-core GPTModel with 3-D mrope, qkv bias, SwiGLU and RMSNorm.
    Sequences are right-padded (or packed with an explicit attention mask): causal attention needs no mask
    for right padding, and padded positions never influence real tokens.
    """

    def __init__(
        self,
        config: TransformerConfig,
        hf_config,
        vision_class: type,
        pre_process: bool = True,
        post_process: bool = True,
        num_layers_here: int | None = None,
    ):
        super().__init__(config=config)
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's pipeline schedules
        text = hf_config.text_config
        self.pre_process, self.post_process = pre_process, post_process
        self.image_token_id = hf_config.image_token_id
        self.video_token_id = getattr(hf_config, "video_token_id", None)
        self.spatial_merge_size = hf_config.vision_config.spatial_merge_size
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if pre_process:
            self.vision = vision_class._from_config(hf_config.vision_config, dtype=config.params_dtype)
        else:
            self.vision = None
        if num_layers_here is None:
            from megatron.core.transformer.transformer_block import get_num_layers_to_build

            num_layers_here = get_num_layers_to_build(config)
        rope = text.rope_parameters
        self.language_model = GPTModel(
            config=config,
            transformer_layer_spec=self._decoder_spec(config, num_layers_here),
            vocab_size=text.vocab_size,
            max_sequence_length=text.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=self.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=rope["rope_theta"],
            scatter_embedding_sequence_parallel=False,
        )

    def _decoder_spec(self, config, num_layers_here: int):
        """The decoder layers' spec (a family may build its own layer class)."""
        return decoder_block_spec(config, num_layers_here)

    # megatron's finalize_model_grads looks these up on the module that has `pre_process` (this one) to
    # all-reduce tied embedding / output-layer gradients between the first and last pipeline stages.
    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hand-off: the activation received from the previous stage."""
        self.language_model.set_input_tensor(input_tensor)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image / video features placed on their placeholder tokens: [seq, batch, h].

        pixel_values / image_grid_thw: the visual items (images, videos or video frames) in placeholder order
        (models.qwen_vl.rope.visual_items). image_mask: where their slots are (default: every image or video
        placeholder token id)."""
        embeddings, _, _ = self.embed_tokens_and_images(input_ids, pixel_values, image_grid_thw, image_mask)
        return self.decoder_input(embeddings)

    def embed_tokens_and_images(self, input_ids, pixel_values, image_grid_thw, image_mask=None):
        """Word embeddings [b, s, h] with the visual items' features on their slots; the vision tower's output
        (None without visual inputs) and the slot mask, for families that use more of the tower's output."""
        embeddings = self.language_model.embedding.word_embeddings(input_ids)  # [b, s, h], TP-reduced
        if image_mask is None:
            image_mask = input_ids == self.image_token_id
            if self.video_token_id is not None:
                image_mask = image_mask | (input_ids == self.video_token_id)
        n_placeholders = int(image_mask.sum())
        out = None
        if pixel_values is not None and pixel_values.numel() > 0:
            pixel_values = pixel_values.to(next(self.vision.parameters()).dtype)
            out = self.vision(pixel_values, grid_thw=image_grid_thw)
            features = out.pooler_output
            if features.shape[0] != n_placeholders:
                raise ValueError(
                    f"{n_placeholders} image / video placeholder tokens but the visual inputs give "
                    f"{features.shape[0]} features: expand each image or video into grid_t*grid_h*grid_w/merge**2 "
                    "placeholders"
                )
            embeddings = embeddings.masked_scatter(image_mask.unsqueeze(-1), features.to(embeddings.dtype))
        elif n_placeholders:
            raise ValueError(
                f"{n_placeholders} image / video placeholder tokens but no pixel_values were given"
            )
        return embeddings, out, image_mask

    def sequence_first(self, x: torch.Tensor) -> torch.Tensor:
        """[b, s, ...] -> [s, b, ...], this rank's share of the sequence under sequence parallelism."""
        x = x.transpose(0, 1).contiguous()
        if not self.config.sequence_parallel:
            return x
        flat = tensor_parallel.scatter_to_sequence_parallel_region(x.view(*x.shape[:2], -1))
        return flat.view(flat.shape[0], *x.shape[1:])

    def decoder_input(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The decoder's input [s, b, h] from word + image embeddings [b, s, h] (embedding dropout)."""
        embeddings = self.sequence_first(embeddings)
        if self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return self.language_model.embedding.embedding_dropout(embeddings)
        return self.language_model.embedding.embedding_dropout(embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """input_ids [b, s], position_ids [3, b, s] (models.qwen_vl.rope), attention_mask None (causal)
        or bool [b, 1, s, s] with True = masked; packed_seq_params: THD packing (models.qwen_vl.packing).
        Returns, on the last stage, vocab-parallel logits
        [b, s, vocab / TP] (or per-token losses [b, s] when labels are given); elsewhere the hidden states
        for the next stage.
        """
        decoder_input = (
            self.embed(input_ids, pixel_values, image_grid_thw, image_mask) if self.pre_process else None
        )
        return self.language_model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            decoder_input=decoder_input,
            labels=labels,
            packed_seq_params=packed_seq_params,
        )

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """Distributed-checkpoint view: megatron's for the language model, replicated tensors for vision."""
        sharded = self.language_model.sharded_state_dict(
            prefix=f"{prefix}language_model.", sharded_offsets=sharded_offsets, metadata=metadata
        )
        if self.vision is not None:
            vision_sd = self.vision.state_dict(prefix="", keep_vars=True)
            sharded.update(
                make_sharded_tensors_for_checkpoint(vision_sd, f"{prefix}vision.", {}, sharded_offsets)
            )
        return sharded
