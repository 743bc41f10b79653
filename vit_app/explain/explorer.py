"""`vit-app attention --html`: the attention explorer, one self-contained page that opens from disk, offline.

Per image the page holds, as 8-bit maps (each scaled to its own min..max, as the PNG overlays are):
    mean-attention       the default map (G = grid_h x grid_w values)
    rollout              up to each layer (L x G)
    attention            each layer's raw class-token attention, head-fused and per head (L x (1 + H) x G)
    class-specific       the class-specific method (CLASS_METHOD) for each of the top-k classes (K x G)
    query rows           where each patch attends, per layer (L x G x G), head-fused; per head too with `heads`
                         (L x (1 + H) x G x G), which is what makes a page large
Beside the page, `<stem>.query.npy` keeps the exact query rows (float32, patch queries -> patch keys): (L, G, G),
or (L, 1 + H, G, G) with heads (index 0 fused).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vit_app.explain.engine import CLASS_METHOD, DEFAULT_METHOD, explain
from vit_app.explain.rollout import HeadFusion, fuse_heads, head_maps, layer_rollouts
from vit_app.model import VisionTransformer

VIEW = 384  # pixels: the side of the explorer's image
TOPK = 5


def quantize(maps: Tensor | np.ndarray) -> np.ndarray:
    """(..., G) maps -> uint8, each map (last axis) scaled to its own min..max (a constant map becomes zeros)."""
    m = torch.as_tensor(maps, dtype=torch.float64)
    lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return torch.round(255 * (m - lo) / span).clamp(0, 255).to(torch.uint8).numpy()


def flat(m: Tensor) -> Tensor:
    """(..., gh, gw) -> (..., G)."""
    return m.reshape(*m.shape[: m.ndim - 2], -1)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def _jpeg(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class ExplorerBatch:
    """What the page shows for a batch of B images (G patches, L layers, H heads, K classes)."""

    probs: Tensor  # (B, C)
    default: Tensor  # (B, G)
    rollout: Tensor  # (B, L, G)
    attention: Tensor  # (B, L, 1 + H, G): index 0 head-fused
    classes: Tensor  # (B, K) top-k class indices
    class_maps: Tensor  # (B, K, G)
    query: Tensor  # (B, L, 1 + H, G, G) or (B, L, 1, G, G)


def explore_batch(
    model: VisionTransformer,
    x: Tensor,
    temperature: float = 1.0,
    heads: bool = False,
    head_fusion: HeadFusion = "mean",
    topk: int = TOPK,
) -> ExplorerBatch:
    """Everything the explorer draws for a normalised batch x (B, 3, H, W)."""
    P, cls = model.num_prefix_tokens, model.has_class_token
    ph, pw = model.patch_embed.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    with torch.no_grad():
        logits, attns = model.forward_with_attention(x)  # each (B, H, T, T)
    attns = [a.float() for a in attns]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    B = x.shape[0]
    rollout = torch.stack(layer_rollouts(attns, head_fusion, 0.0, P, grid, cls), dim=1)  # (B, L, gh, gw)
    raw = []
    for a in attns:
        per_head = head_maps(a, P, grid, cls)  # (B, H, gh, gw)
        fused = head_maps(fuse_heads(a, head_fusion)[:, None], P, grid, cls)  # (B, 1, gh, gw)
        raw.append(torch.cat([fused, per_head], dim=1))
    query = []
    for a in attns:
        rows = a[:, :, P:, P:]  # (B, H, G, G): patch queries -> patch keys
        fused = fuse_heads(a, head_fusion)[:, None, P:, P:]
        query.append(torch.cat([fused, rows], dim=1) if heads else fused)
    k = min(topk, probs.shape[-1])
    classes = probs.topk(k, dim=-1).indices  # (B, K)
    class_maps = torch.stack(
        [explain(model, x, CLASS_METHOD, target=classes[:, j], temperature=temperature).maps for j in range(k)], dim=1
    )  # (B, K, gh, gw); one pass per rank: the batch's j-th class each
    default = explain(model, x, DEFAULT_METHOD, head_fusion=head_fusion, temperature=temperature).maps
    return ExplorerBatch(
        probs=probs,
        default=flat(default).reshape(B, -1),
        rollout=flat(rollout),
        attention=flat(torch.stack(raw, dim=1)),
        classes=classes,
        class_maps=flat(class_maps),
        query=torch.stack(query, dim=1),
    )


def image_record(
    eb: ExplorerBatch, i: int, view: Image.Image, name: str, class_names: list[str], grid: tuple[int, int]
) -> tuple[dict[str, Any], np.ndarray]:
    """(the page's record of batch element i, its exact query rows for the .npy)."""
    q = eb.query[i].cpu()  # (L, 1 or 1 + H, G, G)
    L, nh = q.shape[0], q.shape[1]
    probs = eb.probs[i].cpu()
    pred = int(probs.argmax())
    rec = {
        "name": name,
        "image": _jpeg(view),
        "grid": list(grid),
        "layers": L,
        "heads": int(eb.attention.shape[2]) - 1,
        "query_heads": nh - 1,
        "label": class_names[pred],
        "prob": round(float(probs[pred]), 6),
        "topk": [
            {"label": class_names[int(c)], "index": int(c), "prob": round(float(probs[int(c)]), 6)}
            for c in eb.classes[i]
        ],  # fmt: skip
        "maps": {
            "default": _b64(quantize(eb.default[i])),
            "rollout": _b64(quantize(eb.rollout[i])),
            "attention": _b64(quantize(eb.attention[i])),
            "class": _b64(quantize(eb.class_maps[i])),
            "query": _b64(quantize(q)),
        },
        "query_file": f"{name}.query.npy",
    }
    rows = q.numpy().astype(np.float32)
    return rec, (rows[:, 0] if nh == 1 else rows)


def _inferno() -> list[list[int]]:
    from matplotlib import colormaps

    from vit_app.explain.overlay import CMAP

    lut = colormaps[CMAP](np.linspace(0, 1, 256))[:, :3]
    return np.round(lut * 255).astype(int).tolist()


def write_explorer(out_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """explorer.html in out_dir, the data embedded: it opens from disk in any browser, offline."""
    from vit_app.explain.overlay import ALPHA

    data = {"images": records, "lut": _inferno(), "alpha": list(ALPHA), **meta}
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # never closes the script element early
    page = resources.files("vit_app.explain").joinpath("explorer.html").read_text(encoding="utf-8")
    path = out_dir / "explorer.html"
    path.write_text(page.replace("/*DATA*/null", blob), encoding="utf-8")
    return path
