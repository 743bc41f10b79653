"""Explanations from returned attention maps: rollout and friends (pure functions), pictures, and their evaluation."""

from vit_app.explain.rollout import attention_rollout, fuse_heads, grad_rollout, head_maps, layer_rollouts

__all__ = ["attention_rollout", "fuse_heads", "grad_rollout", "head_maps", "layer_rollouts"]
