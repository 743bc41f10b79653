"""Datasets, transforms and the DataModule. `vit_app.data.ViTDataModule` is imported on first use, so inference
(which reads only transforms and images) never loads Lightning."""

from typing import Any

__all__ = ["ViTDataModule"]


def __getattr__(name: str) -> Any:
    if name == "ViTDataModule":
        from vit_app.data.datamodule import ViTDataModule

        return ViTDataModule
    raise AttributeError(f"module 'vit_app.data' has no attribute {name!r}")
