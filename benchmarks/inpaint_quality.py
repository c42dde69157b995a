"""PSNR of 8x8 inpainted holes over ellipses of msds1 test images (issues 5 and 14).

Every fill is scored on the same holes: an 8x8 square centred (clipped to the image) on a
random ellipse of each of the first `count` test images, which hides that ellipse almost
entirely. The model's fills (`rgflow_core.inpaint`):

* map: the most likely fill (Adam on log p(x), 300 steps from the local-mean fill);
* langevin: the most likely of `--chains` posterior samples (Metropolis-adjusted
  Langevin, `--steps` steps from the image's own patches that the model finds likeliest);
* langevin_sample: one of those samples, at random (the average PSNR of a chain);
* mean: the average of the samples, the posterior-mean estimate;
* ranked_patches_mean: the average of the chains' starting patches (0 steps): what the
  Langevin steps add to `mean`.

Baselines that need no model: the mean colour of the known pixels; a diffusion fill from
the hole's border (`local_mean_fill`); OpenCV's Telea method (when cv2 imports); and the
average of all the image's patches in the hole's shape (`patch_candidates`, unranked):
what the model's ranking adds.

The recorded results (benchmarks/results/inpaint_quality.json) came from this command;
`count` (default 32) is positional:

    OMP_NUM_THREADS=2 python benchmarks/inpaint_quality.py msds1 data/quick 32 \\
        --chains 16 --steps 200 --out benchmarks/results/inpaint_quality.json

(`msds1` is the shipped model; any checkpoint file works.)
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rgflow_core import load_model
from rgflow_core.files import atomic_write_bytes, strict_json
from rgflow_core.inpaint import inpaint, local_mean_fill, patch_candidates, psnr
from rgflow_core.latents import model_fingerprint
from rgflow_core.msds import read_msds

Fill = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def holes(labels: np.ndarray, count: int, seed: int = 0) -> list[torch.Tensor]:
    """(32, 32) bool masks: an 8x8 square on a random ellipse of each image."""
    gen = np.random.default_rng(seed)
    masks = []
    for n in range(count):
        x, y = labels[n, gen.integers(16), :2].astype(int)  # centre of a random ellipse
        top, left = np.clip(y - 4, 0, 24), np.clip(x - 4, 0, 24)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[top : top + 8, left : left + 8] = True
        masks.append(mask)
    return masks


def baselines(image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fills that need no model, as uint8 (C, 32, 32) images."""
    out = {}
    known = image[:, ~mask].float()
    mean = known.mean(1).round().to(torch.uint8).view(3, 1, 1).expand_as(image)
    out["mean_colour"] = torch.where(mask, mean, image)
    out["local_mean"] = (local_mean_fill(image.float(), mask) + 0.5).floor().clamp(0, 255)
    patches = patch_candidates(image, mask).float().mean(0)  # (C, P)
    flat = image.reshape(3, -1).clone()
    flat[:, mask.flatten()] = patches.round().to(torch.uint8)
    out["patch_mean"] = flat.view_as(image)
    try:
        import cv2
    except ImportError:
        return out
    bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[..., ::-1])
    telea = cv2.inpaint(bgr, mask.numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    out["opencv_telea"] = torch.from_numpy(np.ascontiguousarray(telea[..., ::-1])).permute(2, 0, 1)
    return out


def model_fills(model, chains: int, steps: int, seed: int) -> Fill:
    """The model's fills of one image, timed (seconds per image in `seconds`)."""
    seconds: dict[str, list[float]] = {"map": [], "langevin": [], "ranked_patches_mean": []}

    def fill(image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        start = time.perf_counter()
        out["map"] = inpaint(model, image, mask, steps=300).fill
        seconds["map"].append(time.perf_counter() - start)
        for key, n in (("langevin", steps), ("ranked_patches_mean", 0)):
            gen = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            result = inpaint(model, image, mask, method="mean", steps=n, restarts=chains,
                             generator=gen)  # fmt: skip
            seconds[key].append(time.perf_counter() - start)
            if n == 0:
                out[key] = result.mean
                continue
            out["langevin"] = result.images[result.best]
            out["langevin_sample"] = result.images[int(torch.randint(chains, (1,), generator=gen))]
            out["mean"] = result.mean
        return out

    fill.seconds = seconds  # type: ignore[attr-defined]
    return fill


def command() -> str:
    """This run's command line, with the thread setting that its timings depend on."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = [f"OMP_NUM_THREADS={threads}"] if threads else []
    return shlex.join([*prefix, Path(sys.executable).name, *sys.argv])


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = load_model(args.checkpoint).eval()
    images, labels, _ = read_msds(args.data_root, "msds1", "test", limit=args.count)
    fills = model_fills(model, args.chains, args.steps, args.seed)
    scores: dict[str, list[float]] = {}
    for n, mask in enumerate(holes(labels, len(images), args.seed)):
        image = torch.from_numpy(images[n]).permute(2, 0, 1).contiguous()
        truth = image[:, mask]
        filled = fills(image, mask) | baselines(image, mask)
        for key, fill in filled.items():
            assert torch.equal(fill[:, ~mask], image[:, ~mask].to(fill.dtype)), key
            scores.setdefault(key, []).append(psnr(fill[:, mask], truth))
        shown = {k: round(v[-1], 2) for k, v in scores.items()}
        print(f"image {n}: {shown}", file=sys.stderr, flush=True)
    try:
        import cv2

        opencv = cv2.__version__
    except ImportError:
        opencv = None
    summary = {
        key: {
            "mean_psnr_db": float(np.mean(v)),
            "sem_db": float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None,
            "images": len(v),
            "psnr_db": [round(x, 3) for x in v],
        }
        for key, v in sorted(scores.items(), key=lambda kv: -np.mean(kv[1]))
    }
    seconds = {k: float(np.mean(v)) for k, v in fills.seconds.items()}  # type: ignore[attr-defined]
    return {
        "command": command(),
        "checkpoint": str(args.checkpoint),
        "fingerprint": model_fingerprint(model),
        "data": f"{args.data_root}/msds1 test, first {len(images)} images",
        "holes": f"8x8 square centred (clipped) on a random ellipse, numpy seed {args.seed}",
        "settings": {"map_steps": 300, "chains": args.chains, "langevin_steps": args.steps},
        "seconds_per_image": seconds,
        "threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "opencv": opencv,
            "python": platform.python_version(),
        },
        "results": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("count", type=int, nargs="?", default=32)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    text = strict_json(run(args), indent=1)
    if args.out is not None:
        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()
