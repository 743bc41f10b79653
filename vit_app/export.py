"""`vit-app export`: a trained model to ONNX, TorchScript or safetensors, each with its model card."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch

from vit_app.card import save_safetensors
from vit_app.inference import InferenceModel

ExportFormat = Literal["onnx", "torchscript", "safetensors"]


def export_model(im: InferenceModel, fmt: ExportFormat, out: str | os.PathLike) -> Path:
    """Write `im` in `fmt` to `out`; ONNX and TorchScript take any batch size and get the card beside them as
    OUT.json (safetensors carries it in its header). Returns the written path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = im.model.eval().cpu()
    size = im.card.input.img_size
    example = torch.randn(2, 3, size, size)
    if fmt == "safetensors":
        save_safetensors(model.state_dict(), im.card, out)
        return out
    with warnings.catch_warnings():
        # The tracer notes that the input size becomes a constant: it is the card's, and only the batch is dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        if fmt == "torchscript":
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
    out.with_suffix(out.suffix + ".json").write_text(im.card.to_json())
    return out
