"""What one Swish layer of the quick model's compiled training step costs, loop by loop.

    python benchmarks/swish_loops.py --out benchmarks/results/swish_loops.json

The quick model's step is dominated by Inductor's loops around the Swish activations
(`profile_step.py --kernels`). This times, on the shape of one hidden layer at level 0
and batch 64 ((2 nets, 4096 rows, 64 features), 2 MB), the same computations compiled
alone, as the training graph compiles them:

* `scale`: read 2 MB, multiply, write 2 MB (the cost of one pass over the data);
* `forward`: bias, Swish (sigmoid: an exp and a divide), as the forward pass runs it;
* `forward, keeping the sigmoid`: the same, also writing the sigmoid for the backward;
* `backward`: from the saved input and the output gradient, the input gradient, the
  Swish (the next weight gradient's input) and the bias and slope gradients (two sums
  over the rows), recomputing the sigmoid;
* `backward, sigmoid kept`: the same, reading the sigmoid instead of recomputing it;
* `backward without the sums`, `the sums alone`: the two halves of `backward`.

Each is the median of up to `--reps` calls (`rgflow bench`'s timer), with the allocator
settings of the `rgflow` command (without them, fresh pages for each output make the
times erratic). Compare them with each other, in one run: the machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from rgflow_core.allocator import tune_malloc
from rgflow_core.bench import _time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="64 blocks x batch 64")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    malloc_tuned = tune_malloc()

    gen = torch.Generator().manual_seed(0)
    shape = (2, args.rows, args.features)
    x, grad = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    bias = 0.1 * torch.randn(2, 1, args.features, generator=gen)
    beta = 0.5 + torch.rand(2, 1, args.features, generator=gen)
    sig = torch.sigmoid(beta * x)

    def forward(h):
        h = h + bias
        return h * torch.sigmoid(beta * h)

    def forward_keeping(h):
        h = h + bias
        s = torch.sigmoid(beta * h)
        return h * s, s

    def backward_from(h, s, g, with_sums=True):
        swish = h * s
        q = g * s * (1 - s) * h
        grad_h = g * s + q * beta
        if not with_sums:
            return grad_h, swish
        return grad_h, swish, g.sum(1, keepdim=True), (q * h).sum(1, keepdim=True)

    def backward(h, g, with_sums=True):
        return backward_from(h, torch.sigmoid(beta * h), g, with_sums)

    def sums(h, g):
        s = torch.sigmoid(beta * h)
        q = g * s * (1 - s) * h
        return g.sum(1, keepdim=True), (q * h).sum(1, keepdim=True)

    cases = {
        "scale": (lambda h: h * 2.0, (x,)),
        "forward": (forward, (x,)),
        "forward, keeping the sigmoid": (forward_keeping, (x,)),
        "backward": (backward, (x, grad)),
        "backward, sigmoid kept": (backward_from, (x, sig, grad)),
        "backward without the sums": (lambda h, g: backward(h, g, False), (x, grad)),
        "the sums alone": (sums, (x, grad)),
    }
    cpu, times = torch.device("cpu"), {}
    for name, (fn, inputs) in cases.items():
        fn = torch.compile(fn, dynamic=False)
        seconds = _time(
            lambda fn=fn, inputs=inputs: fn(*inputs), cpu, budget_s=2.0, max_reps=args.reps
        )
        times[name] = 1e6 * seconds
        print(f"{name:32s} {times[name]:8.1f} us")
    result = {
        "command": f"python benchmarks/swish_loops.py --rows {args.rows} "
        f"--features {args.features} --reps {args.reps}",
        "shape": list(shape),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "malloc_tuned": malloc_tuned,
        "microseconds_per_call": times,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
