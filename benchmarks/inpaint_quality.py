"""PSNR of 8x8 inpainted holes over ellipses of msds1 test images (issue 5, item 5).

Compares rgflow's maximum-likelihood fill against two baselines that need no model: the
mean colour of the known pixels, and a diffusion fill from the hole's border
(`local_mean_fill`, also the optimiser's starting point). OpenCV's Telea method is
included only when cv2 is importable.

    python benchmarks/inpaint_quality.py runs/quick/checkpoints/last.safetensors data/quick 32
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from rgflow_core import load_model
from rgflow_core.inpaint import inpaint, local_mean_fill, psnr
from rgflow_core.msds import read_msds


def main(checkpoint: str, root: str, count: int) -> None:
    torch.manual_seed(0)
    model = load_model(checkpoint).eval()
    images, labels, _ = read_msds(root, "msds1", "test")
    gen = np.random.default_rng(0)
    try:
        import cv2
    except ImportError:
        cv2 = None
    scores: dict[str, list[float]] = {"rgflow": [], "mean_colour": [], "local_mean": []}
    if cv2 is not None:
        scores["opencv_telea"] = []
    for n in range(count):
        image = torch.from_numpy(images[n]).permute(2, 0, 1).contiguous()
        x, y = labels[n, gen.integers(16), :2].astype(int)  # centre of a random ellipse
        top, left = np.clip(y - 4, 0, 24), np.clip(x - 4, 0, 24)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[top : top + 8, left : left + 8] = True
        truth = image[:, mask].float()

        result = inpaint(model, image, mask, steps=300)
        fill = result.images[result.best]
        scores["rgflow"].append(psnr(fill[:, mask].float(), truth))
        known = image[:, ~mask].float()
        mean = known.mean(1, keepdim=True).round().expand_as(truth)
        scores["mean_colour"].append(psnr(mean, truth))
        diffused = (local_mean_fill(image.float(), mask) + 0.5).floor().clamp(0, 255)
        scores["local_mean"].append(psnr(diffused[:, mask], truth))
        if cv2 is not None:
            bgr = np.ascontiguousarray(images[n][..., ::-1])
            out = cv2.inpaint(bgr, mask.numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
            telea = torch.from_numpy(np.ascontiguousarray(out[..., ::-1])).permute(2, 0, 1)
            scores["opencv_telea"].append(psnr(telea[:, mask].float(), truth))
    summary = {k: {"mean_psnr_db": float(np.mean(v)), "images": len(v)} for k, v in scores.items()}
    summary["opencv_available"] = cv2 is not None
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 32)
