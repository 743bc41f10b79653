"""`vit-app attention`: for each image an overlay PNG, the raw map as .npy and, on request, layer and head grids."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from vit_app.errors import ConfigError
from vit_app.explain.engine import CLASS_METHOD, CLASS_SPECIFIC, DEFAULT_METHOD, Explanation, explain, resolve_method
from vit_app.explain.explorer import VIEW, explore_batch, image_record, write_explorer
from vit_app.explain.overlay import COARSE, Upsample, grid, model_view, overlay, tile
from vit_app.explain.rollout import HeadFusion
from vit_app.inference import InferenceModel
from vit_app.inputs import Counts, Item, describe_skipped, expand_inputs, iter_batches, require_images, stack_ok
from vit_app.progress import bar, say


def resolve_class(spec: str | None, class_names: list[str]) -> int | None:
    """A class given by name or index -> its index (None stays None)."""
    if spec is None:
        return None
    if spec in class_names:
        return class_names.index(spec)
    if spec.lstrip("-").isdigit() and 0 <= int(spec) < len(class_names):
        return int(spec)
    shown = ", ".join(class_names[:20]) + (f", ... ({len(class_names) - 20} more)" if len(class_names) > 20 else "")
    raise ConfigError(
        f"--class {spec!r}: not a class of this model; give a name or an index 0-{len(class_names) - 1}: {shown}"
    )


def check_layer(layer: int, depth: int, option: str = "--layer") -> int:
    """The block index `layer` names (negative counts from the last), or ConfigError."""
    if not -depth <= layer < depth:
        raise ConfigError(f"{option} {layer}: the model has {depth} blocks: give 0-{depth - 1}, or -1 for the last")
    return layer % depth


class _Names:
    """Output file stems: the image's stem, made unique within the run ('cat', 'cat-2', ...)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: str) -> str:
        stem = Path(path).stem or "image"
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}"
        self.used.add(name)
        return name


def describe_map(method: str, layer: int | None, class_name: str | None) -> str:
    """'rollout', 'attention, layer 2', 'relevance for class star': what made a map (for captions and titles)."""
    text = method + (f", layer {layer}" if layer is not None else "")
    return text + (f" for class {class_name}" if class_name is not None else " (not class-specific)")


def _caption(im: InferenceModel, probs: torch.Tensor, target: int, method: str, layer: int) -> list[str]:
    pred = int(probs.argmax())
    shown_layer = layer % len(im.model.blocks) if method == "attention" else None
    explained = im.class_names[target] if method in CLASS_SPECIFIC else None
    return [f"{im.class_names[pred]} {float(probs[pred]):.1%}", describe_map(method, shown_layer, explained)]


def write_one(
    im: InferenceModel,
    item: Item,
    ex: Explanation,
    i: int,
    out_dir: Path,
    stem: str,
    method: str,
    layer: int,
    upsample: Upsample = "auto",
) -> dict[str, Any]:
    """Write the files of batch element i; return its index record."""
    assert item.image is not None
    m = ex.maps[i].float().cpu().numpy()
    spec = im.card.input
    probs, target = ex.probs[i].cpu(), int(ex.target[i])
    lines = _caption(im, probs, target, method, layer)
    files = {"overlay": f"{stem}.png", "map": f"{stem}.npy", "input": f"{stem}_input.jpg"}
    overlay(item.image, m, lines, spec, upsample=upsample).save(out_dir / files["overlay"])
    model_view(item.image, spec).save(out_dir / files["input"], quality=90)
    np.save(out_dir / files["map"], m.astype(np.float32))
    if ex.layers is not None:
        view = model_view(item.image, spec, 160)
        tiles = [tile(view, lm[i].cpu().numpy(), [f"up to layer {j}"], upsample) for j, lm in enumerate(ex.layers)]
        files["layers"] = f"{stem}_layers.png"
        title = f"rollout up to each layer: {lines[0]}"
        grid(tiles, cols=min(len(tiles), 6), title=title).save(out_dir / files["layers"])
    if ex.heads is not None:
        view = model_view(item.image, spec, 160)
        hm = ex.heads[i].cpu().numpy()
        tiles = [tile(view, hm[h], [f"head {h}"], upsample) for h in range(hm.shape[0])]
        files["heads"] = f"{stem}_heads.png"
        shown = layer % len(im.model.blocks)  # -1 -> the last block's index
        title = f"attention, layer {shown}, each head: {lines[0]}"
        grid(tiles, cols=min(len(tiles), 6), title=title).save(out_dir / files["heads"])
    pred = int(probs.argmax())
    top_p, top_i = probs.topk(min(5, probs.numel()))
    return {
        "path": item.path,
        "label": im.class_names[pred],
        "index": pred,
        "prob": round(float(probs[pred]), 6),
        "explained_class": im.class_names[target] if method in CLASS_SPECIFIC else None,
        "topk": [{"label": im.class_names[int(j)], "prob": round(float(q), 6)} for q, j in zip(top_p, top_i)],
        "method": method,
        **files,
    }


def _explorer_meta(im: InferenceModel, head_fusion: str) -> dict[str, Any]:
    c = im.card.model
    model = (f"{c.depth} blocks x {c.embed_dim} wide, {c.num_heads} heads, patch {c.patch_size} on "
             f"{im.card.input.img_size} px, {len(im.class_names)} classes")  # fmt: skip
    return {"model": model, "default_method": DEFAULT_METHOD, "class_method": CLASS_METHOD,
            "head_fusion": head_fusion, "coarse": COARSE}  # fmt: skip


def run_attention(
    im: InferenceModel,
    inputs: Iterable[str],
    out_dir: str | os.PathLike,
    method: str = "rollout",
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    layer: int = -1,
    target_class: str | None = None,
    with_layers: bool = False,
    with_heads: bool = False,
    batch_size: int = 16,
    err: IO[str] | None = None,
    html: bool = False,
    upsample: Upsample = "auto",
    html_heads: bool = False,
) -> Counts:
    """Explain every input into out_dir (plus index.jsonl, one record an image). Options and inputs are checked
    before anything is written: a bad one is a UserError and leaves no output folder behind."""
    inputs = list(inputs)
    try:
        method = resolve_method(method)
    except ValueError as e:
        raise ConfigError(f"--method: {e}") from None
    target = resolve_class(target_class, im.class_names)
    check_layer(layer, len(im.model.blocks))
    found = expand_inputs(inputs)
    require_images(found, inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the maps")
    out.mkdir(parents=True, exist_ok=True)
    names = _Names()
    done = failed = 0
    pages: list[dict[str, Any]] = []  # the explorer's records (--html)
    with open(out / "index.jsonl", "w") as index:

        def record(rec: dict[str, Any]) -> None:
            index.write(json.dumps(rec) + "\n")
            index.flush()

        def report(item: Item) -> None:
            nonlocal failed
            failed += 1
            record({"path": item.path, "error": item.error})
            say(f"vit-app attention: {item.path}: {item.error}", err)

        if found.skipped:
            say(f"vit-app attention: {describe_skipped(found.skipped)}", err)
        for item in found.missing:
            report(item)
        progress = bar(len(found.paths), "attention", file=err)
        for items in iter_batches(found.paths, im.transform, batch_size):
            ok, x = stack_ok(items)
            ex = None
            if x is not None:
                ex = explain(
                    im.model, x.to(im.device), method, head_fusion, discard_ratio, layer, target,
                    with_layers, with_heads, im.temperature,
                )  # fmt: skip
            eb = explore_batch(im.model, x.to(im.device), im.temperature, html_heads, head_fusion) if html else None
            pos = {id(it): i for i, it in enumerate(ok)}
            for item in items:
                if item.error is not None or ex is None:
                    report(item)
                    continue
                try:
                    stem = names(item.path)
                    record(write_one(im, item, ex, pos[id(item)], out, stem, method, layer, upsample))
                    if eb is not None:
                        assert item.image is not None
                        view = model_view(item.image, im.card.input, VIEW)
                        page, rows = image_record(eb, pos[id(item)], view, stem, im.class_names, ex.maps.shape[-2:])
                        np.save(out / page["query_file"], rows)
                        pages.append(page)
                    done += 1
                except OSError as e:
                    item.error = f"cannot write output: {e}"
                    report(item)
            progress.update(len(items))
        progress.close()
    if html:
        from vit_app.explain.report import write_report

        write_report(out)
        if pages:
            write_explorer(out, pages, _explorer_meta(im, head_fusion))
    return Counts(done, failed, len(found.skipped))
