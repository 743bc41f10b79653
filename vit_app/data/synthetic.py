"""A built-in shapes dataset, generated deterministically with no files: the offline default.

Each image holds one object whose *shape* is the class (circle, square, triangle, star, cross, ring), with random
size, position, rotation and colour, on a textured, cluttered background with distractor strokes and dots. Colour
carries no class information. Every sample also has its object mask, for judging attention maps.
"""

from __future__ import annotations

import math
import multiprocessing
import os

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)
RADIUS = (0.24, 0.45)  # object circumradius as a fraction of the image side
ROTATION = 20.0  # degrees either way
# Background clutter: grating amplitude, pixel noise, and the count ranges of distractor strokes and dots.
CLUTTER = {"texture": 0.05, "noise": 0.03, "lines": (1, 4), "dots": (1, 4)}
# Objects are vivid (saturated) and backgrounds muted, as salient objects in photos are: any hue, for every class.
OBJECT_SV = ((0.6, 1.0), (0.6, 1.0))
BACKGROUND_SV = ((0.0, 0.35), (0.15, 0.85))
_SS = 4  # supersampling factor: shapes are drawn at 4x and box-filtered down, so edges are anti-aliased


def _polygon(shape: str, cx: float, cy: float, r: float, theta: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius r centred at (cx, cy), rotated by theta."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [
            ((1.0 if i % 2 == 0 else 0.36) * math.cos(a), (1.0 if i % 2 == 0 else 0.36) * math.sin(a))
            for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)
        ]
    elif shape == "cross":
        w = 0.34  # half-width of each bar, relative to r
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w),
               (-w, 1)]  # fmt: skip
    else:
        raise ValueError(shape)
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_shape(shape: str, size: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """Coverage in [0, 1] of one shape, (size, size) float32, anti-aliased by supersampling."""
    big = Image.new("L", (size * _SS, size * _SS), 0)
    d = ImageDraw.Draw(big)
    cx, cy, r = cx * _SS, cy * _SS, r * _SS
    if shape in ("circle", "ring"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = 0.55 * r
            d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        d.polygon(_polygon(shape, cx, cy, r, theta), fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """An RGB colour of uniformly random hue with saturation and value drawn from the given ranges."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + oriented gratings + noise + distractor strokes and dots: (size, size, 3) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = (_hsv_colour(rng, *BACKGROUND_SV) for _ in range(2))
    a = rng.uniform(0, 2 * math.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t) + c1 * t  # (H, W, 3) linear gradient
    for _ in range(2):  # gratings: texture that is not the object
        f, phi, o = rng.uniform(2, 8), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * f * (np.cos(o) * xx + np.sin(o) * yy) + phi)[..., None]
        img = img + CLUTTER["texture"] * wave * (_random_colour(rng) - 0.5)
    img = img + rng.normal(0, CLUTTER["noise"], size=img.shape).astype(np.float32)
    # Distractors: thin strokes and small dots in random colours, drawn on top of the texture.
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(*CLUTTER["lines"]))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        d.line([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for _ in range(int(rng.integers(*CLUTTER["dots"]))):
        x, y = rng.uniform(0, size, 2)
        rr = rng.uniform(0.5, 1.5) * size / 32
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(pil, dtype=np.float32) / 255.0


def render_sample(seed: int, index: int, size: int = 32) -> tuple[np.ndarray, int, np.ndarray]:
    """Render sample `index` of the stream `seed`: (image uint8 (H, W, 3), label, object mask bool (H, W))."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(SHAPES)))
    bg = _background(rng, size)
    r = rng.uniform(*RADIUS) * size  # circumradius
    margin = r * 1.02
    cx, cy = rng.uniform(margin, size - margin, 2)
    cover = _draw_shape(SHAPES[label], size, cx, cy, r, math.radians(rng.uniform(-ROTATION, ROTATION)))  # (H, W)
    colour = _hsv_colour(rng, *OBJECT_SV)
    shading = 1.0 + rng.normal(0, 0.05, size=(size, size, 1)).astype(np.float32)
    img = bg * (1 - cover[..., None]) + np.clip(colour * shading, 0, 1) * cover[..., None]
    img_u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img_u8, label, cover > 0.5


PAIR_RADIUS = (0.21, 0.245)  # two objects side by side: each as large as its half of the image allows


def render_pair(seed: int, index: int, size: int = 32) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Sample `index` of the two-object stream `seed`: two objects of different classes, side by side (left/right
    or top/bottom, at random) on the same kind of background. Returns (image uint8 (H, W, 3), (label_a, label_b),
    masks bool (2, H, W)); the masks do not overlap. For judging class-specific maps: asked for label_a, a map
    should point into masks[0]."""
    rng = np.random.default_rng([seed, index, 2])  # a stream of its own: never a training or validation image
    labels = tuple(int(c) for c in rng.choice(len(SHAPES), size=2, replace=False))
    img = _background(rng, size)
    masks = np.zeros((2, size, size), dtype=bool)
    horizontal = bool(rng.integers(2))
    for k, label in enumerate(labels):
        r = rng.uniform(*PAIR_RADIUS) * size
        along = rng.uniform(r * 1.02, size / 2 - r * 1.02) + k * size / 2  # in its own half
        across = rng.uniform(r * 1.02, size - r * 1.02)
        cx, cy = (along, across) if horizontal else (across, along)
        cover = _draw_shape(SHAPES[label], size, cx, cy, r, math.radians(rng.uniform(-ROTATION, ROTATION)))
        colour = _hsv_colour(rng, *OBJECT_SV)
        img = img * (1 - cover[..., None]) + colour * cover[..., None]
        masks[k] = cover > 0.5
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), labels, masks  # type: ignore[return-value]


def _render_chunk(seed: int, start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for j, i in enumerate(range(start, stop)):
        images[j], labels[j], _ = render_sample(seed, i, size)
    return images, labels


class SyntheticShapes(Dataset):
    """`length` deterministic samples of the shapes stream `seed`; items are (PIL image, label)."""

    classes = list(SHAPES)

    def __init__(self, length: int, seed: int, img_size: int = 32, transform=None) -> None:
        self.length, self.seed, self.img_size, self.transform = length, seed, img_size, transform
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(image uint8 (H, W, 3), label, mask bool (H, W)) for one index."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        return render_sample(self.seed, index, self.img_size)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (N, H, W, 3) uint8 and labels (N,), rendered once (in parallel over the CPU cores)."""
        chunks = [range(i, min(self.length, i + 2048)) for i in range(0, self.length, 2048)]
        workers = min(len(chunks), os.cpu_count() or 1)
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.starmap(_render_chunk, [(self.seed, r.start, r.stop, self.img_size) for r in chunks])
        else:
            parts = [_render_chunk(self.seed, r.start, r.stop, self.img_size) for r in chunks]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def __getitem__(self, index: int):
        if index not in self._cache:  # rendering costs ~0.2 ms; each worker keeps what it has drawn
            img, label, _ = self.sample(index)
            self._cache[index] = (img, label)
        img, label = self._cache[index]
        pil = Image.fromarray(img)
        return (self.transform(pil) if self.transform else pil), label
