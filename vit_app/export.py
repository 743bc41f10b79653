"""`vit-app export`: a checkpoint to ONNX, TorchScript or safetensors (weights + the metadata inference needs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from vit_app.errors import CheckpointError
from vit_app.inference import InferenceModel

ExportFormat = Literal["onnx", "torchscript", "safetensors"]
META_KEY = "vit_app"  # safetensors header key holding the JSON metadata


def export_model(im: InferenceModel, fmt: ExportFormat, out: str | os.PathLike) -> Path:
    """Write `im` in `fmt` to `out`; ONNX and TorchScript take any batch size. Returns the written path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = im.model.eval().cpu()
    size = int(im.metadata["eval_transform"]["img_size"])
    example = torch.randn(2, 3, size, size)
    if fmt == "safetensors":
        save_safetensors(model.state_dict(), im.metadata, out)
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(out))
    elif fmt == "onnx":
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    else:
        raise ValueError(f"--format must be onnx, torchscript or safetensors, got {fmt!r}")
    if fmt != "safetensors":  # the metadata travels beside the model file
        out.with_suffix(out.suffix + ".json").write_text(json.dumps(im.metadata, indent=2))
    return out


def save_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={META_KEY: json.dumps(metadata)})


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, vit-app metadata or None) from a .safetensors file: tensors only, no code can run."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return state, (json.loads(meta[META_KEY]) if META_KEY in meta else None)
