"""vit-app: train Vision Transformers, classify images with them, and see why they decided."""

__version__ = "0.1.0"
