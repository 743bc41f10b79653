"""One image loader for training data, classify and attention: allow-listed formats, correct mode conversion."""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from vit_app.errors import UserError

# A truncated file is an error, never a silently half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif")
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "HEIF", "AVIF"})
MAX_FILE_BYTES = 256 * 1024 * 1024  # refuse to even open files larger than this
MAX_PIXELS = 89_478_485  # Pillow's default bomb threshold; twice this is refused by Pillow itself


class ImageLoadError(UserError, ValueError):
    """An image that cannot be used, with the file and the reason in the message."""

    def reason(self, path: str | os.PathLike) -> str:
        """The message without its leading "<path>: ", for reports that name the file themselves."""
        return str(self).removeprefix(f"{path}: ")


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


@functools.cache
def _register_heif() -> None:
    """HEIC/HEIF (phone photos) through the pillow-heif plugin; Pillow reads AVIF itself."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # not installed: such files are then reported as unidentifiable
        return
    register_heif_opener()


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit scaled, alpha composited onto `background`, CMYK and palette."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | os.PathLike, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open an image file as 8-bit RGB with EXIF orientation applied; raise ImageLoadError naming file and reason."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageLoadError(f"{p}: cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise ImageLoadError(f"{p}: empty file")
    if size > MAX_FILE_BYTES:
        raise ImageLoadError(f"{p}: file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit")
    return _decode(p, str(p), background, MAX_PIXELS)


def load_image_bytes(
    data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An uploaded image's bytes as 8-bit RGB, with the checks of load_image (and a pixel limit of its own);
    ImageLoadError names `name` and the reason."""
    if not data:
        raise ImageLoadError(f"{name}: empty")
    return _decode(io.BytesIO(data), name, background, max_pixels)


def _decode(src: Any, p: str, background: tuple[int, int, int], max_pixels: int) -> Image.Image:
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise ImageLoadError(f"{p}: format {img.format} is not allowed")
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(f"{p}: {w}x{h} pixels exceeds the {max_pixels} pixel limit")
                img.seek(0)  # animated images: the first frame
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img, background)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{p}: refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{p}: not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{p}: cannot decode ({e})") from None
