"""What bounds decoding one image (the explorer's slider) on one thread.

    OMP_NUM_THREADS=1 python benchmarks/decode_bound.py --preset celeba32 \\
        --out benchmarks/results/decode_bound-celeba32.json

Measures, in one process on one thread: the median time of decoding one image of a
randomly initialised model of the preset's architecture (eval mode, as the explorer
decodes) and the share of it in matmuls (torch.profiler); the matmul rate of one
(2, rows, 512) x (2, 512, 512) batched Linear with its weights warm in cache and with
them cold (cycling through more weights than the caches hold, as a decode does); and the
rate at which one thread reads memory. With the decode's FLOPs and the bytes of weights
it reads, these give the two floors a one-image decode cannot go below.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from profile_step import kind_of  # this folder's: the same sorting of operators into kinds
from torch.profiler import ProfilerActivity, profile

from rgflow_core.bench import _random_model, forward_flops
from rgflow_core.config import load_preset


def linear_rate(rows: int, cold: bool, hidden: int = 512, reps: int = 200) -> float:
    """GFLOP/s of baddbmm on (2, rows, hidden) x (2, hidden, hidden)."""
    n_weights = 160 if cold else 1  # 160 x 2 MB: far more than the L2 caches
    weights = [torch.randn(2, hidden, hidden) / hidden**0.5 for _ in range(n_weights)]
    bias = torch.zeros(2, 1, hidden)
    x = torch.randn(2, rows, hidden)
    for w in weights:
        torch.baddbmm(bias, x, w)
    start = time.perf_counter()
    for i in range(reps):
        torch.baddbmm(bias, x, weights[i % n_weights])
    seconds = (time.perf_counter() - start) / reps
    return 2 * 2 * rows * hidden * hidden / seconds / 1e9


def read_rate(megabytes: int = 400) -> float:
    """GB/s at which one thread sums a tensor far larger than the caches' share of it."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / min(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="celeba32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:  # as the rgflow command (and so the explorer) runs; absent in older versions
        from rgflow_core.allocator import tune_malloc

        tune_malloc()
    except ImportError:
        pass
    torch.set_num_threads(1)

    cfg = load_preset(args.preset).model
    model = _random_model(cfg, torch.device("cpu")).eval()
    z = model.sample_latents(1)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model.decode(z)
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.decode(z)
            times.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.decode(z)
    matmul_s = sum(
        e.self_cpu_time_total / 1e6 for e in prof.key_averages() if kind_of(e.key) == "matmul"
    )
    # the weights a decode reads: each coupling pass reads its layer's nets, restricted
    # to the half it reads and the half it writes (about half the first and last Linear)
    weight_bytes = 4 * sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(".v") or ".v." in n
    )
    flops = forward_flops(cfg)
    result = {
        "command": f"OMP_NUM_THREADS=1 python benchmarks/decode_bound.py --preset {args.preset}",
        "preset": args.preset,
        "torch": torch.__version__,
        "decode_ms_median": 1e3 * statistics.median(times),
        "decode_matmul_ms_profiled": 1e3 * matmul_s,
        "decode_gflop": flops / 1e9,
        "weight_mb": weight_bytes / 1e6,
        "weight_mb_read_per_decode_about": 2 * weight_bytes / 1e6,
        "linear_gflops": {
            f"{rows} rows, {'cold' if cold else 'warm'}": linear_rate(rows, cold)
            for rows in (1, 4, 16, 64)
            for cold in (False, True)
        },
        "read_gb_per_s": read_rate(),
    }
    warm64 = result["linear_gflops"]["64 rows, warm"]
    result["floor_ms_compute"] = 1e3 * flops / (warm64 * 1e9)
    result["floor_ms_memory"] = result["weight_mb_read_per_decode_about"] / result["read_gb_per_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
