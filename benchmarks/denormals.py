"""Are subnormal (denormal) floats slowing training down? Counts them in a checkpoint's
training step and times the step with the CPU's flush-to-zero off and on, alternating.

    python benchmarks/denormals.py EPOCH1.safetensors msds1 --data data/quick/msds1/test \\
        --out benchmarks/results/denormals.json

For each checkpoint (a file or a built-in model's name): the share of subnormal values
among the activations autograd saves, the gradients and the weights of one training step
on 64 test images, and the median time of that step with `torch.set_flush_denormal`
False and True over `--pairs` alternating pairs. Subnormal arithmetic is slow on x86
(up to 100x per operation), so a trained model full of them would train slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rgflow_core import load_model
from rgflow_core.images import read_images
from rgflow_core.preprocess import dequantize, image_bpd

TINY = torch.finfo(torch.float32).tiny


def subnormal(t: torch.Tensor) -> tuple[int, int]:
    if t.dtype != torch.float32:
        return 0, 0
    return int(((t != 0) & (t.abs() < TINY)).sum()), t.numel()


def measure(checkpoint: str, images: torch.Tensor, pairs: int) -> dict:
    model = load_model(checkpoint)
    model.kernel = "fast"
    model.train()
    saved = [0, 0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        a, n = subnormal(t)
        saved[0] += a
        saved[1] += n
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = image_bpd(model, dequantize(images)).mean()
    loss.backward()
    grads = [subnormal(p.grad) for p in model.parameters()]
    weights = [subnormal(p.detach()) for p in model.parameters()]

    def step() -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        image_bpd(model, dequantize(images)).mean().backward()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    step()
    for _ in range(pairs):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            times[flush].append(step())
    torch.set_flush_denormal(False)
    return {
        "checkpoint": checkpoint,
        "subnormal_share": {
            "saved_activations": saved[0] / max(saved[1], 1),
            "gradients": sum(a for a, _ in grads) / sum(n for _, n in grads),
            "weights": sum(a for a, _ in weights) / sum(n for _, n in weights),
        },
        "subnormal_count_saved_activations": saved[0],
        "step_seconds_median": {
            "flush_off": statistics.median(times[False]),
            "flush_on": statistics.median(times[True]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="folder of test images")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    paths = sorted(args.data.glob("*.png"))[:64]
    images = read_images(paths, 3, 32, False)
    result = {
        "command": "python benchmarks/denormals.py "
        + " ".join(args.checkpoints)
        + f" --data {args.data} --pairs {args.pairs}",
        "threads": torch.get_num_threads(),
        "results": [measure(c, images, args.pairs) for c in args.checkpoints],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
