"""Build a folder of the broken and odd images people have on disk (shared by the image, classify, attention tests)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BROKEN = {"truncated.jpg", "empty.png", "text.png", "bomb.png"}


def _png_bomb() -> bytes:
    """A valid 1x1 PNG whose header claims 40000 x 40000 pixels: Pillow must refuse it before allocating."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 40000, 40000)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def make_odd_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    p = {}

    def path(name: str) -> Path:
        p[name] = folder / name
        return p[name]

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    path("truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    path("empty.png").write_bytes(b"")
    path("text.png").write_text("this is not an image\n")
    path("bomb.png").write_bytes(_png_bomb())
    photo.save(path("good.jpg"), quality=90)
    Image.fromarray(np.full((24, 24), 32768, dtype=np.uint16)).save(path("gray16.png"))
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(path("cmyk.jpg"))
    rot = Image.new("RGB", (40, 20), (0, 128, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    rot.save(path("exif_rotated.jpg"), exif=exif)
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 12, 24))
    pal.save(path("palette_transparent.png"), transparency=0)
    Image.new("RGB", (3000, 1), (10, 200, 30)).save(path("wide_3000x1.png"))
    Image.new("LA", (20, 20), (128, 0)).save(path("gray_alpha.png"))
    Image.new("1", (20, 20), 1).save(path("bilevel.png"))
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    return p
