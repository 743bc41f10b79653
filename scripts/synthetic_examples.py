#!/usr/bin/env python
"""Write images of the built-in synthetic shapes (validation stream) as PNG files, e.g. to try classify/attention:

python scripts/synthetic_examples.py --out examples --n 8 --size 96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_app.data.synthetic import SHAPES, render_sample  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="examples", help="output folder")
    p.add_argument("--n", type=int, default=8, help="how many images")
    p.add_argument("--size", type=int, default=32, help="side in pixels (the quickstart model sees 32)")
    p.add_argument("--seed", type=int, default=2000, help="stream seed (2000: the quickstart's validation images)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        img, label, _ = render_sample(args.seed, i, args.size)
        Image.fromarray(img).save(out / f"{i:03d}_{SHAPES[label]}.png")
    print(f"wrote {args.n} images to {out}/")


if __name__ == "__main__":
    main()
