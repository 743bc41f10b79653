"""Train and eval transforms. The eval transform is described by an InputSpec, which every model card carries.

The eval transform is PIL + torch only (torchvision's own import costs seconds of start-up for `vit-app classify`),
with torchvision's arithmetic, tested equal to its v2 pipeline. Training transforms use torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

TrainCrop = Literal["auto", "pad", "rrc", "none"]
MAX_ASPECT = 4.0  # eval: longer side at most 4x the shorter, so a 3000x1 image cannot blow up memory
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the default normalisation (timm's and torchvision's)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal["bicubic", "bilinear", "nearest"]


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input: shorter side to img_size / crop_pct, centre crop img_size, then
    (x - mean) / std on [0, 1] pixel values."""

    img_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bicubic"

    def __post_init__(self) -> None:
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, int) or self.img_size < 1:
            raise ValueError(f"img_size must be a whole number >= 1, got {self.img_size!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(self.mean)} and {list(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {list(self.std)}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be bicubic, bilinear or nearest, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @classmethod
    def create(
        cls,
        img_size: int,
        crop_pct: float | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> InputSpec:
        """The spec with defaults for what is None: no crop for small images (<= 64 px), timm's 0.875 above;
        ImageNet mean and std."""
        crop = crop_pct if crop_pct is not None else (1.0 if img_size <= 64 else 0.875)
        return cls(img_size, crop, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(int(d["img_size"]), float(d["crop_pct"]), tuple(d["mean"]), tuple(d["std"]),
                   d.get("interpolation", "bicubic"))  # fmt: skip


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


PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST}  # fmt: skip


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Any]:
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class EvalTransform:
    """PIL RGB image -> normalised (3, S, S) float tensor: aspect limited, shorter side resized to S / crop_pct
    (torchvision's size rule), centre crop S, scaled to [0, 1], (x - mean) / std."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.resize = int(round(spec.img_size / spec.crop_pct))
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = self.pixels(img)  # (3, S, S) uint8
        return x.to(torch.float32).mul_(1.0 / 255).sub(self.mean).div_(self.std)

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """The geometric part alone: (3, S, S) uint8, as the in-memory loader stores an image file."""
        img = LimitAspect()(img)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)  # (w, h)
        if size != (w, h):
            img = img.resize(size, PIL_RESAMPLE[self.spec.interpolation])
        S = self.spec.img_size
        top, left = int(round((size[1] - S) / 2.0)), int(round((size[0] - S) / 2.0))
        img = img.crop((left, top, left + S, top + S))
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S) uint8

    def __repr__(self) -> str:
        return f"EvalTransform({self.spec})"


def build_eval_transform(spec: InputSpec) -> EvalTransform:
    return EvalTransform(spec)


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
    from torchvision.transforms import v2

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
