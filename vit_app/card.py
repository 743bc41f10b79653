"""The model card: what a trained model is, in one typed place that every command reads.

A card holds the model config, the class names, the input spec (size, crop, mean/std), the calibrated temperature
and where the model came from. `fit` writes it into every checkpoint (under the "vit_app" key) and `export` into a
.safetensors header; `read_card` is its only reader and `ModelCard.to_dict` its only writer. Nothing here imports
Lightning or the training code, so inference starts fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vit_app import __version__
from vit_app.checkpoint import safe_load
from vit_app.data.transforms import InputSpec
from vit_app.errors import CheckpointError
from vit_app.model import ViTConfig

CARD_KEY = "vit_app"  # the checkpoint entry and the safetensors header key that hold the card
CARD_FORMAT = 2  # 1: the layout before the card (model_config / eval_transform / weights), read for old files


@dataclass(frozen=True)
class Provenance:
    """Where a model came from: what it was trained on, how long, in what precision, and how it scored."""

    dataset: str | None = None  # e.g. "cifar10", "imagefolder"
    data_root: str | None = None
    seed: int | None = None
    epochs: int | None = None  # epochs completed when the checkpoint was written
    steps: int | None = None  # optimiser steps
    train_minutes: float | None = None  # wall time since training (this process) started
    precision: str | None = None  # Lightning's precision string, e.g. "bf16-mixed"
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation metrics, e.g. {"val/acc1": 0.95}
    vit_app_version: str | None = None
    created: str | None = None  # ISO 8601, UTC

    @staticmethod
    def now(**kw: Any) -> Provenance:
        stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        return Provenance(vit_app_version=__version__, created=stamp, **kw)


@dataclass(frozen=True)
class ModelCard:
    """A trained model, as plain typed data: enough to rebuild it, feed it images and trust its probabilities."""

    model: ViTConfig
    class_names: list[str]
    input: InputSpec
    temperature: float = 1.0  # softmax(logits / temperature); 1.0 until `vit-app calibrate` fits one
    provenance: Provenance = field(default_factory=Provenance)
    weights: str = ""  # in a training checkpoint: the state_dict prefix of the model's weights ("model_ema.module.")
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model of {self.model.num_classes} classes")
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def with_temperature(self, t: float) -> ModelCard:
        return replace(self, temperature=float(t))

    def to_dict(self) -> dict[str, Any]:
        """The card as it is stored (the one writer): plain data, safe for weights_only loading and for JSON."""
        return {
            "format": CARD_FORMAT,
            "model": self.model.to_dict(),
            "class_names": list(self.class_names),
            "input": self.input.to_dict(),
            "temperature": float(self.temperature),
            "provenance": asdict(self.provenance),
            "weights": self.weights,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _legacy(d: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (vit-app before the card): model_config, class_names, eval_transform, weights[, temperature]."""
    return {
        "model": d["model_config"],
        "class_names": d["class_names"],
        "input": d["eval_transform"],
        "temperature": d.get("temperature", 1.0),
        "provenance": {},
        "weights": d.get("weights", "model."),
    }


def read_card(d: Any, source: str | os.PathLike = "model card") -> ModelCard:
    """The one reader: a card from its stored dict (either format), or CheckpointError naming `source`."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: not a vit-app model (it has no '{CARD_KEY}' model card)")
    fmt = d.get("format", 1)
    if not isinstance(fmt, int) or fmt > CARD_FORMAT:
        raise CheckpointError(f"{source}: model card format {fmt!r} is newer than this vit-app reads; upgrade vit-app")
    try:
        d = _legacy(d) if fmt == 1 else d
        prov_keys = {f.name for f in fields(Provenance)}
        prov = {k: v for k, v in (d.get("provenance") or {}).items() if k in prov_keys}
        return ModelCard(
            model=ViTConfig.from_dict(d["model"]),
            class_names=[str(c) for c in d["class_names"]],
            input=InputSpec.from_dict(d["input"]),
            temperature=float(d.get("temperature", 1.0)),
            provenance=Provenance(**prov),
            weights=str(d.get("weights", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{source}: its model card is damaged ({what})") from None


def _checkpoint_weights(ckpt: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return {}
    return {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def load_model_file(path: str | os.PathLike) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """(card, model state dict) from a vit-app checkpoint (.ckpt), an exported .safetensors file or a timm-format
    folder (config.json + model.safetensors), read safely."""
    p = Path(path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        from vit_app.hub import read_timm_folder

        return read_timm_folder(p)
    if p.suffix == ".safetensors":
        state, header = load_safetensors(p)
        if header is None:
            raise CheckpointError(f"{p}: a safetensors file without a vit-app model card (export it with vit-app)")
        return read_card(header, p), state
    ckpt = safe_load(p)
    card = read_card(ckpt.get(CARD_KEY), p)
    weights = _checkpoint_weights(ckpt, card.weights)
    if not weights:
        raise CheckpointError(f"{p}: holds a model card but no model weights under '{card.weights}'")
    return card, weights


def read_card_file(path: str | os.PathLike) -> ModelCard:
    """Only the card of a checkpoint or .safetensors file."""
    return load_model_file(path)[0]


def save_safetensors(state: dict[str, torch.Tensor], card: ModelCard, path: str | os.PathLike) -> None:
    """The model's weights with its card (JSON in the header), written atomically with the usual permissions."""
    from safetensors.torch import save

    from vit_app.checkpoint import atomic_write

    header = {CARD_KEY: replace(card, weights="").to_json()}
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=header)
    atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, the stored card dict or None) from a .safetensors file: tensors only, no code can run."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if CARD_KEY not in meta:
        return state, None
    try:
        return state, json.loads(meta[CARD_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its model card is not valid JSON ({e})") from None
