"""`vit-app export`: a trained model to ONNX, TorchScript, safetensors or timm's folder format, each with its card."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch

from vit_app.card import save_safetensors
from vit_app.inference import InferenceModel

ExportFormat = Literal["onnx", "torchscript", "safetensors", "timm"]


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
    if fmt == "timm":
        from vit_app.hub import write_timm_folder

        write_timm_folder(model.state_dict(), im.card, out)
        check_timm_folder(im, out, example)
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
            raise ValueError(f"--format must be onnx, torchscript, safetensors or timm, got {fmt!r}")
    out.with_suffix(out.suffix + ".json").write_text(im.card.to_json())
    return out


def check_timm_folder(im: InferenceModel, folder: Path, x: torch.Tensor, atol: float = 1e-5) -> None:
    """Load `folder` the way timm does (`timm.create_model("local-dir:...")`) and the way vit-app does, and require
    both to give `im`'s logits on x: what is shared (or pushed) is known to work."""
    import timm

    from vit_app.errors import CheckpointError
    from vit_app.inference import load_for_inference

    with torch.no_grad():
        want = im.model(x)
        theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)
        ours = load_for_inference(folder).model(x)
    for who, got in (("timm", theirs), ("vit-app", ours)):
        diff = float((got - want).abs().max())
        if diff > atol:
            raise CheckpointError(f"{folder}: loaded by {who}, the model's logits differ by {diff:.2e} (> {atol})")
