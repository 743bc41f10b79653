"""Pictures of attention maps: a heat-map overlay on the image the model saw, and grids of maps."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from vit_app.data.transforms import InputSpec, LimitAspect

DISPLAY = 320  # pixels: the side of an overlay picture


def normalize_map(m: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (a constant map becomes all zeros)."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def model_view(img: Image.Image, spec: InputSpec, size: int = DISPLAY) -> Image.Image:
    """The part of `img` the model sees (same aspect limit, resize and centre crop as the eval transform), at `size`."""
    img = LimitAspect()(img)
    w, h = img.size
    short = round(size / spec.crop_pct)
    nw, nh = (short, max(1, round(h * short / w))) if w <= h else (max(1, round(w * short / h)), short)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def heat(m: np.ndarray, size: int, cmap: str = "jet") -> Image.Image:
    """A (gh, gw) map as an RGB heat picture of size x size (bicubic upsampling of the normalised map)."""
    small = Image.fromarray((normalize_map(m) * 255).astype(np.uint8), "L")
    big = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    return Image.fromarray((colormaps[cmap](big)[..., :3] * 255).astype(np.uint8), "RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def caption(img: Image.Image, text: str) -> Image.Image:
    """Add a dark banner with `text` under the picture."""
    font = _font(max(12, img.width // 20))
    bh = int(font.size * 1.6) if hasattr(font, "size") else 20
    out = Image.new("RGB", (img.width, img.height + bh), (20, 20, 20))
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((6, img.height + bh // 5), text, fill=(255, 255, 255), font=font)
    return out


def tile(view: Image.Image, m: np.ndarray, text: str, alpha: float = 0.5) -> Image.Image:
    """A square RGB view blended with the heat map of `m`, captioned with `text`."""
    return caption(Image.blend(view, heat(m, view.width), alpha), text)


def overlay(
    img: Image.Image, m: np.ndarray, text: str, spec: InputSpec, size: int = DISPLAY, alpha: float = 0.5
) -> Image.Image:
    """The model's view of `img` blended with the heat map of `m`, captioned with `text` (e.g. 'cat 93.1%')."""
    return tile(model_view(img.convert("RGB"), spec, size), m, text, alpha)


def grid(tiles: list[Image.Image], cols: int, title: str | None = None) -> Image.Image:
    """Tiles (all the same size) in rows of `cols`, with an optional title banner on top."""
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    out = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, ((i % cols) * w, (i // cols) * h))
    if title:
        font = _font(max(12, w // 16))
        bh = int(getattr(font, "size", 14) * 1.8)
        framed = Image.new("RGB", (out.width, out.height + bh), (20, 20, 20))
        framed.paste(out, (0, bh))
        ImageDraw.Draw(framed).text((6, bh // 5), title, fill=(255, 255, 255), font=font)
        out = framed
    return out
