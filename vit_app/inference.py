"""Load a checkpoint for inference: no config file, no CLI. classify, attention and export all start here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vit_app.checkpoint import safe_load
from vit_app.data.transforms import build_eval_transform
from vit_app.errors import CheckpointError
from vit_app.model import VisionTransformer
from vit_app.module import CHECKPOINT_KEY


@dataclass
class InferenceModel:
    """A model in eval mode with what it needs to read images: class names and the eval transform."""

    model: VisionTransformer
    class_names: list[str]
    transform: Callable[[Image.Image], torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """Rebuild the model saved in a vit-app checkpoint (or exported .safetensors), load its weights (the EMA
    weights if it was trained with them), in eval mode, with its class names and eval transform."""
    if str(path).endswith(".safetensors"):
        from vit_app.export import load_safetensors

        weights, meta = load_safetensors(path)
        if meta is None:
            raise CheckpointError(f"{path}: a safetensors file without vit-app metadata (export it with vit-app)")
    else:
        ckpt = safe_load(path)
        meta = ckpt.get(CHECKPOINT_KEY)
        if not isinstance(meta, dict) or "model_config" not in meta:
            raise CheckpointError(f"{path}: not a vit-app checkpoint (it has no '{CHECKPOINT_KEY}' entry)")
        state = ckpt.get("state_dict", {})
        prefix = meta.get("weights", "model.")
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        meta = {**meta, "weights": ""}
    model = VisionTransformer(**meta["model_config"])
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model config it records ({reason})") from None
    model.eval().to(device)
    return InferenceModel(model, list(meta["class_names"]), build_eval_transform(meta["eval_transform"]), meta)
