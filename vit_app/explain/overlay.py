"""Pictures of attention maps people can read: the image stays visible under the map, coarse grids are drawn as the
patches they are, every picture says which method, layer and class made it, and grids carry a colour bar."""

from __future__ import annotations

from typing import Literal

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from vit_app.data.transforms import InputSpec, LimitAspect

DISPLAY = 320  # pixels: the side of an overlay picture
CMAP = "inferno"  # perceptually uniform: brightness rises with the value, readable in grey and by the colour-blind
ALPHA = (0.0, 0.75)  # the map's opacity at its lowest and highest value: the image shows through where it is low
COARSE = 8  # grids this small or smaller are drawn as blocks (nearest): smoothing them invents detail
Upsample = Literal["auto", "nearest", "bicubic"]


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


def _resample(upsample: Upsample, grid: tuple[int, ...]) -> Image.Resampling:
    if upsample == "auto":
        upsample = "nearest" if max(grid) <= COARSE else "bicubic"
    return Image.Resampling.NEAREST if upsample == "nearest" else Image.Resampling.BICUBIC


def heat(m: np.ndarray, size: int, upsample: Upsample = "auto") -> Image.Image:
    """A (gh, gw) map as an RGBA picture of size x size: colour and opacity both rise with the normalised value."""
    small = Image.fromarray((normalize_map(m) * 255).astype(np.uint8), "L")
    v = np.asarray(small.resize((size, size), _resample(upsample, m.shape)), dtype=np.float64) / 255.0
    rgba = colormaps[CMAP](v)  # (size, size, 4)
    rgba[..., 3] = ALPHA[0] + (ALPHA[1] - ALPHA[0]) * v
    return Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")


def blend(view: Image.Image, m: np.ndarray, upsample: Upsample = "auto", opacity: float = 1.0) -> Image.Image:
    """The view with the map over it (the map's opacity scaled by `opacity`)."""
    layer = heat(m, view.width, upsample)
    if opacity != 1.0:
        layer.putalpha(Image.fromarray((np.asarray(layer)[..., 3] * opacity).astype(np.uint8)))
    return Image.alpha_composite(view.convert("RGBA"), layer).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def colour_bar(width: int, height: int = 10) -> Image.Image:
    """A horizontal strip from the map's lowest value (left) to its highest (right), as drawn."""
    v = np.linspace(0, 1, width)[None, :].repeat(height, 0)
    rgba = colormaps[CMAP](v)
    rgb = rgba[..., :3] * (ALPHA[0] + (ALPHA[1] - ALPHA[0]) * v)[..., None] + 0.5 * (1 - rgba[..., 3:])  # on grey
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")


def caption(img: Image.Image, lines: list[str], bar: bool = True, text_px: int | None = None) -> Image.Image:
    """A dark banner under the picture with the lines of text and, with `bar`, a colour bar labelled low / high."""
    font = _font(text_px or max(11, img.width // 24))
    fs = getattr(font, "size", 12)
    line_h = int(fs * 1.35)
    bar_h = line_h + 4 if bar else 0
    bh = len(lines) * line_h + bar_h + 8
    out = Image.new("RGB", (img.width, img.height + bh), (20, 20, 20))
    out.paste(img, (0, 0))
    d = ImageDraw.Draw(out)
    for i, text in enumerate(lines):
        d.text((6, img.height + 4 + i * line_h), text, fill=(255, 255, 255), font=font)
    if bar:
        y = img.height + 4 + len(lines) * line_h + 2
        low_w = int(d.textlength("low ", font=font)) + 6
        high_w = int(d.textlength(" high", font=font)) + 6
        d.text((6, y - 2), "low", fill=(200, 200, 200), font=font)
        strip = colour_bar(max(10, img.width - low_w - high_w - 6), max(6, fs // 2))
        out.paste(strip, (low_w, y + (fs - strip.height) // 2))
        d.text((low_w + strip.width + 4, y - 2), "high", fill=(200, 200, 200), font=font)
    return out


def tile(
    view: Image.Image, m: np.ndarray, lines: list[str], upsample: Upsample = "auto", bar: bool = False
) -> Image.Image:
    """A square RGB view with the map over it, captioned."""
    return caption(blend(view, m, upsample), lines, bar)


def overlay(
    img: Image.Image, m: np.ndarray, lines: list[str], spec: InputSpec, size: int = DISPLAY, upsample: Upsample = "auto"
) -> Image.Image:
    """The model's view of `img` with the map over it, the caption lines (e.g. 'star 84.5%', 'rollout, class star')
    and a colour bar below."""
    return tile(model_view(img.convert("RGB"), spec, size), m, lines, upsample, bar=True)


def grid(tiles: list[Image.Image], cols: int, title: str | None = None) -> Image.Image:
    """Tiles (all the same size) in rows of `cols`, a title banner on top and a colour bar under them."""
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    out = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, ((i % cols) * w, (i // cols) * h))
    px = max(12, w // 16)
    font = _font(px)
    bh = int(getattr(font, "size", 14) * 1.8)
    framed = Image.new("RGB", (out.width, out.height + bh), (20, 20, 20))
    framed.paste(out, (0, bh))
    if title:
        ImageDraw.Draw(framed).text((6, bh // 5), title, fill=(255, 255, 255), font=font)
    return caption(framed, [], bar=True, text_px=px)
