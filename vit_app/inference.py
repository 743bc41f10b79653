"""A trained model, ready to use from Python or a command: load it from a checkpoint or an exported file, classify
images and explain its decisions. Reads only the model card; knows nothing of training (no Lightning import).

    from vit_app.inference import load_for_inference
    m = load_for_inference("best.ckpt")
    m.predict(["a.jpg", pil_image], topk=3)   # per image: [{"label", "index", "prob"}, ...]
    m.explain(["a.jpg"], method="rollout")     # (N, grid_h, grid_w)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vit_app.card import ModelCard, load_model_file
from vit_app.data.images import load_image
from vit_app.data.transforms import build_eval_transform
from vit_app.errors import CheckpointError
from vit_app.model import VisionTransformer
from vit_app.tta import TTA, tta_logits, view_shift

ImageLike = str | os.PathLike | Image.Image


def topk_records(probs: torch.Tensor, class_names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of probs (B, C): the k most likely classes as [{"label", "index", "prob"}, ...], most likely first."""
    k = min(k, probs.shape[1])
    p, idx = probs.topk(k, dim=1)
    return [
        [{"label": class_names[int(j)], "index": int(j), "prob": round(float(q), 6)} for q, j in zip(pr, ix)]
        for pr, ix in zip(p, idx)
    ]


class InferenceModel:
    """A model in eval mode with its card: `m(x)` gives logits, `m.probs(x)` calibrated probabilities, and
    `predict` / `explain` take image files or PIL images."""

    def __init__(self, model: VisionTransformer, card: ModelCard, source: str = "") -> None:
        self.model = model.eval()
        self.card = card
        self.source = source  # the file or folder it was loaded from
        self.transform = build_eval_transform(card.input)

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def temperature(self) -> float:
        return self.card.temperature

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> InferenceModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for a normalised batch (B, 3, S, S)."""
        return self.model(x.to(self.device)).float()

    def logits(self, x: torch.Tensor, tta: TTA = "none") -> torch.Tensor:
        """Logits (B, C) for a normalised batch, averaged over the views of test-time augmentation `tta`
        ("flip": each image and its mirror; "flip_shift": 18 views, moved a quarter patch and mirrored; vit_app.tta)."""
        return tta_logits(self, x, tta, view_shift(self.model.patch_embed.patch_size[0]))

    def probs(self, x: torch.Tensor, tta: TTA = "none") -> torch.Tensor:
        """Class probabilities (B, C) for a normalised batch, with the card's temperature (1 unless calibrated);
        `tta` as in `logits`."""
        return torch.softmax(self.logits(x, tta) / self.temperature, dim=-1).cpu()

    def load(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Image files or PIL images -> the normalised batch (N, 3, S, S) the model takes. A file that cannot be
        read raises ImageLoadError naming it."""
        pil = [img.convert("RGB") if isinstance(img, Image.Image) else load_image(img) for img in images]
        return torch.stack([self.transform(img) for img in pil])

    def predict(
        self, images: Sequence[ImageLike], topk: int = 5, batch_size: int = 32, tta: TTA = "none"
    ) -> list[list[dict[str, Any]]]:
        """Per image, the top-k classes as [{"label", "index", "prob"}, ...]: what `vit-app classify --format json`
        writes for it (`tta` as in `probs`)."""
        out: list[list[dict[str, Any]]] = []
        for start in range(0, len(images), batch_size):
            x = self.load(images[start : start + batch_size])
            out += topk_records(self.probs(x, tta), self.class_names, topk)
        return out

    def explain(self, images: Sequence[ImageLike], method: str | None = None, **options: Any) -> torch.Tensor:
        """Maps (N, grid_h, grid_w) for the images, as `vit-app attention` writes them to .npy (method: the same
        default, mean-attention). `options` go to vit_app.explain.engine.explain (head_fusion, discard_ratio, layer,
        target)."""
        from vit_app.explain.engine import DEFAULT_METHOD, explain

        x = self.load(images).to(self.device)
        maps = explain(self.model, x, method or DEFAULT_METHOD, temperature=self.temperature, **options).maps
        return maps.cpu()


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' (a CUDA GPU when there is one), 'cpu', 'cuda' or 'cuda:N'."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available here; use cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r}: use auto, cpu, cuda or cuda:N") from None


def load_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """The model saved in a vit-app checkpoint, an exported .safetensors file or a timm-format folder (`vit-app
    export --format timm`), its EMA weights if it was trained with them, in eval mode, with its card. Loaded safely:
    tensors and plain data only."""
    device = resolve_device(device)
    card, weights = load_model_file(path)
    model = VisionTransformer(card.model)
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model config its card records ({reason})") from None
    return InferenceModel(model, card, str(path)).to(device)
