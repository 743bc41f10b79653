"""Datasets, transforms and the DataModule."""

from vit_app.data.datamodule import ViTDataModule

__all__ = ["ViTDataModule"]
