"""Train and eval transforms. The eval transform is described by a plain dict stored in every checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import v2

TrainCrop = Literal["auto", "pad", "rrc", "none"]
MAX_ASPECT = 4.0  # eval: longer side at most 4x the shorter, so a 3000x1 image cannot blow up memory


class LimitAspect:
    """Centre-crop a PIL image whose aspect ratio exceeds `max_aspect` (keeps resizes bounded)."""

    def __init__(self, max_aspect: float = MAX_ASPECT) -> None:
        self.max_aspect = max_aspect

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w > h * self.max_aspect:
            nw = max(1, round(h * self.max_aspect))
            left = (w - nw) // 2
            return img.crop((left, 0, left + nw, h))
        if h > w * self.max_aspect:
            nh = max(1, round(w * self.max_aspect))
            top = (h - nh) // 2
            return img.crop((0, top, w, top + nh))
        return img

    def __repr__(self) -> str:
        return f"LimitAspect(max_aspect={self.max_aspect})"


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Any]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_spec(img_size: int, crop_pct: float, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The plain-data description of an eval transform (safe to store in a checkpoint)."""
    return {
        "img_size": int(img_size),
        "crop_pct": float(crop_pct),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "interpolation": "bicubic",
    }


def build_eval_transform(spec: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised (3, S, S) tensor: shorter side to S / crop_pct, centre crop S."""
    size = int(spec["img_size"])
    resize = int(round(size / float(spec["crop_pct"])))
    interp = v2.InterpolationMode(spec.get("interpolation", "bicubic"))
    return v2.Compose(
        [
            LimitAspect(),
            v2.Resize(resize, interpolation=interp, antialias=True),
            v2.CenterCrop(size),
            *_to_normalized_tensor(spec["mean"], spec["std"]),
        ]
    )


def timm_rand_augment(config: str, img_size: int, mean: tuple[float, ...]) -> Callable[[Image.Image], Image.Image]:
    """timm's RandAugment for `config` (e.g. "rand-m9-mstd0.5-inc1"), with its posterize ops swapped for the
    original AutoAugment one (keep 4-8 bits): timm's others can ask Pillow >= 13 for 0 bits, which it refuses."""
    from timm.data import auto_augment as aa

    increasing = any(part == "inc1" for part in config.split("-"))
    names = aa._RAND_INCREASING_TRANSFORMS if increasing else aa._RAND_TRANSFORMS
    names = ["PosterizeOriginal" if n.startswith("Posterize") else n for n in names]
    fill = tuple(round(255 * m) for m in mean)
    return aa.rand_augment_transform(config, {"translate_const": int(img_size * 0.45), "img_mean": fill}, names)


def build_train_transform(
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop: TrainCrop = "auto",
    rrc_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    rand_augment: str | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """CIFAR-style (pad 1/8 + random crop, flip) for small images, random-resized-crop for large ones; "none"
    keeps the image whole (flip only)."""
    if crop == "auto":
        crop = "pad" if img_size <= 64 else "rrc"
    ops: list[Any] = [LimitAspect()]
    if crop == "none":
        ops += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    elif crop == "pad":
        ops += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]  # no-op for native-size images
        ops += [v2.RandomCrop(img_size, padding=img_size // 8, padding_mode="reflect")]
    else:
        ops += [v2.RandomResizedCrop(img_size, scale=rrc_scale, interpolation=v2.InterpolationMode.BICUBIC)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if rand_augment:
        ops.append(timm_rand_augment(rand_augment, img_size, mean))
    return v2.Compose(ops + _to_normalized_tensor(mean, std))
