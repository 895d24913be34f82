"""Fused Triton ops; ``grpo_loss`` is the GRPO loss the actor calls."""

from mmr1_mega.ops.grpo import grpo_loss, loss_implementation, triton_usable

__all__ = ["grpo_loss", "loss_implementation", "triton_usable"]
