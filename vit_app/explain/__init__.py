"""Explanations from returned attention maps: rollout and friends (pure functions), attention-aware LRP, pictures,
and their evaluation."""

from vit_app.explain.rollout import attention_rollout, fuse_heads, head_maps, layer_rollouts, relevance_rollout

__all__ = ["attention_rollout", "fuse_heads", "head_maps", "layer_rollouts", "relevance_rollout"]
