"""A model in timm's folder format (what `timm.create_model("local-dir:DIR")` and the Hugging Face Hub read):
config.json (architecture, model_args, label_names, preprocessing), model.safetensors (the weights, our card in its
header) and README.md (a model card for people). Written, read back, and pushed to the Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vit_app.card import ModelCard, Provenance, load_safetensors, read_card, save_safetensors
from vit_app.data.transforms import InputSpec
from vit_app.errors import CheckpointError
from vit_app.model import TRAINING_ONLY, ViTConfig

CONFIG, WEIGHTS, README = "config.json", "model.safetensors", "README.md"
# timm builds any size from this registered name plus model_args (model_args win over the name's defaults).
TIMM_ARCHITECTURE = "vit_base_patch16_224"


def timm_config(card: ModelCard) -> dict[str, Any]:
    """config.json as timm's hub loader reads it."""
    c, spec = card.model, card.input
    size = [c.img_size, c.img_size] if isinstance(c.img_size, int) else list(c.img_size)
    model_args = {k: v for k, v in c.timm_kwargs().items() if k not in TRAINING_ONLY}
    return {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": c.num_classes,
        "num_features": c.embed_dim,
        "global_pool": c.global_pool,
        "label_names": list(card.class_names),
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "vit_app",
            "custom_load": False,
            "input_size": [c.in_chans, *size],
            "fixed_input_size": True,
            "interpolation": spec.interpolation,
            "crop_pct": spec.crop_pct,
            "crop_mode": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "num_classes": c.num_classes,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def model_card_readme(card: ModelCard, repo_id: str | None = None) -> str:
    """README.md: Hub metadata, what the model is, how it scored, how to load it."""
    c, p = card.model, card.provenance
    name = repo_id or "DIR"
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:DIR"
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(p.metrics.items())) or "| (none recorded) | |"
    classes = ", ".join(card.class_names[:20]) + (
        f", ... ({len(card.class_names) - 20} more)" if len(card.class_names) > 20 else ""
    )
    return f"""---
tags:
- image-classification
- timm
- vit-app
library_name: timm
---
# {name}

A Vision Transformer trained with vit-app: {c.depth} blocks x {c.embed_dim} wide,
{c.num_heads} heads, {c.patch_size}-px patches on {card.input.img_size}-px images, {c.num_classes} classes
({classes}).

| trained on | epochs | steps | minutes | precision |
| --- | --- | --- | --- | --- |
| {p.dataset} | {p.epochs} | {p.steps} | {p.train_minutes} | {p.precision} |

| metric (validation) | value |
| --- | --- |
{metrics}

Softmax temperature (from `vit-app calibrate`; timm does not apply it): {card.temperature:g}.

## Use

```python
import timm
model = timm.create_model("{source}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)   # resize, crop and normalisation it was trained with
```

With vit-app: `vit-app classify image.jpg --ckpt DIR` (a local copy of this folder), or in Python
`vit_app.load_for_inference("DIR")`.
"""


def write_timm_folder(state: dict[str, torch.Tensor], card: ModelCard, out: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and README.md into the folder `out`."""
    out = Path(out)
    if ours := card.model.timm_inexpressible():
        raise CheckpointError(
            f"--format timm: this model uses {', '.join(ours)}, which timm's VisionTransformer cannot build; "
            "export it as .safetensors, .onnx or .pt instead"
        )
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out}: is a file; the timm format is a folder")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, card, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(timm_config(card), indent=2) + "\n")
    (out / README).write_text(model_card_readme(card))
    return out


def card_from_timm_config(cfg: dict[str, Any], where: Path) -> ModelCard:
    """A card for a timm folder written by another tool: architecture from model_args, inputs from pretrained_cfg."""
    args = dict(cfg.get("model_args") or {})
    pre = cfg.get("pretrained_cfg") or {}
    num_classes = int(cfg.get("num_classes", pre.get("num_classes", args.get("num_classes", 1000))))
    size = (pre.get("input_size") or [3, 224, 224])[1:]
    args.setdefault("img_size", size[0] if size[0] == size[1] else tuple(size))
    args["num_classes"] = num_classes
    known = {f for f in ViTConfig.__dataclass_fields__}
    try:
        config = ViTConfig.from_dict({k: v for k, v in args.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: config.json's model_args do not describe a ViT we can build ({e})") from None
    labels = cfg.get("label_names") or pre.get("label_names") or [str(i) for i in range(num_classes)]
    spec = InputSpec.create(config.img_size if isinstance(config.img_size, int) else config.img_size[0],
                            float(pre.get("crop_pct", 0.875)), tuple(pre.get("mean", (0.485, 0.456, 0.406))),
                            tuple(pre.get("std", (0.229, 0.224, 0.225))))  # fmt: skip
    return ModelCard(model=config, class_names=list(labels), input=spec, provenance=Provenance())


def read_timm_folder(folder: str | os.PathLike) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """(card, weights) of a timm-format folder: our card from the weights' header, else one built from config.json."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: a folder without {WEIGHTS} (export one with `vit-app export --format timm`)")
    state, header = load_safetensors(weights)
    if header is not None:
        return read_card(header, weights), state
    cfg_file = folder / CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS} has no vit-app card and there is no {CONFIG} beside it")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: not readable JSON ({e})") from None
    return card_from_timm_config(cfg, cfg_file), state


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a written folder to the Hugging Face Hub as model repo `repo_id` (created if missing); returns its
    URL. Needs a network and a token (HF_TOKEN, or `huggingface-cli login`)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    readme = folder / README
    card = read_timm_folder(folder)[0]
    readme.write_text(model_card_readme(card, repo_id))  # the README names the repo it lives in
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload a vit-app model (timm format)")  # fmt: skip
    except Exception as e:  # no network, no token, no rights: one line, not a traceback
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"push to the Hub as {repo_id} failed: {reason}") from None
    return str(url)
