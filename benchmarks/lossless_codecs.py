"""What general-purpose lossless image codecs need on an MSDS test set, in bits per
dimension, for scale beside a model's test bpd.

    python benchmarks/lossless_codecs.py data/quick/msds1/test \
        --out benchmarks/results/lossless_codecs-msds1.json

Every PNG of the folder is decoded and encoded again, in memory, as PNG (zlib level 9)
and as lossless WebP (method 6, the slowest and smallest); bits/dim is 8 x bytes / (C x H x W)
averaged over the images, whole files (headers included), as a file on disk would cost.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CODECS = {
    "png": {"format": "PNG", "optimize": True, "compress_level": 9},
    "webp_lossless": {"format": "WEBP", "lossless": True, "quality": 100, "method": 6},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    paths = sorted(args.folder.glob("*.png"))[: args.limit]
    if not paths:
        raise SystemExit(f"error: no PNG images in {args.folder}")
    bits: dict[str, list[float]] = {name: [] for name in CODECS}
    for path in paths:
        with Image.open(path) as im:
            image = im.convert("RGB")
        dims = 3 * image.width * image.height
        for name, options in CODECS.items():
            buf = io.BytesIO()
            image.save(buf, **options)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            assert np.array_equal(decoded, np.asarray(image)), f"{name} is not lossless"
            bits[name].append(8 * len(buf.getvalue()) / dims)
    result = {
        "command": f"python benchmarks/lossless_codecs.py {args.folder} --limit {args.limit}",
        "images": len(paths),
        "bits_per_dim": {name: float(np.mean(v)) for name, v in bits.items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
