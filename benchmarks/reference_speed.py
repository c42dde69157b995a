"""rgflow against the paper's own code, side by side on this machine: training and sampling
images/s and peak memory of the same architecture, in alternating runs.

    python benchmarks/reference_speed.py --ref-code /path/to/RG-Flow/code --preset quick \\
        --batch-size 64 --pairs 5 --out benchmarks/results/reference_speed-quick.json
    RGFLOW_REFERENCE_CODE=/path/to/RG-Flow/code python benchmarks/reference_speed.py ...

The paper's code (github.com/hongyehu/RG-Flow, its `code/` folder) is imported from the
folder given, never downloaded or copied. Each measurement is a fresh process (so that its
peak memory is its own): it builds the preset's architecture in float32 (rgflow's
`build_model`, or the paper's `build_mera` with the same arguments), takes warm-up steps,
then times `--steps` training steps (log-density of logit-space images, backward, gradient
clipping at 1, AdamW) or `--steps` sampling passes (prior sample, inverse; in eval mode).
rgflow and the paper's code take turns, A B A B, `--pairs` times; the ratio of each pair
is reported, and the median of the ratios is the figure to quote. Both models are randomly
perturbed from the identity so that no coupling is trivial. rgflow runs with the C
allocator settings its command sets (`rgflow_core.allocator`); `--tune-reference-malloc`
gives the paper's code the same, to see how much of a ratio they make.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker(args: argparse.Namespace) -> dict:
    """One measurement in this process: images/s and peak RSS."""
    from rgflow_core.allocator import tune_malloc

    # rgflow runs with the allocator settings its command sets; the paper's code with
    # glibc's defaults unless --tune-reference-malloc
    malloc_tuned = tune_malloc() if args.worker == "rgflow" or args.tune_reference_malloc else False

    import torch

    from rgflow_core.config import load_preset

    torch.manual_seed(0)
    cfg = load_preset(args.preset).model
    shape = (args.batch_size, cfg.channels, cfg.image_size, cfg.image_size)
    y = torch.logit(0.05 + 0.9 * torch.rand(shape, generator=torch.Generator().manual_seed(0)))
    if args.worker == "rgflow":
        from rgflow_core.bench import _random_model

        flow = _random_model(cfg, torch.device("cpu"))
        flow.kernel = args.kernel  # training only: sampling runs the fast kernels either way
        log_prob = flow.log_prob

        def sample() -> None:
            flow.decode(flow.sample_latents(args.batch_size))

    else:
        sys.path.insert(0, str(HERE))
        from reference_fixtures import configure, import_paper_code

        from rgflow_core.reference import reference_args

        ref_args, ref_main, _ = import_paper_code(Path(args.ref_code), "float32")
        values = {}
        for arg in reference_args(cfg):
            key, value = arg.removeprefix("--").split("=")
            values[key] = int(value) if key in ("nchannels", "L", "kernel_size") else value
        configure(ref_args, values)
        flow = ref_main.build_mera()
        with torch.no_grad():  # the same perturbation as rgflow's bench model
            for name, p in flow.named_parameters():
                if name.endswith("scale"):
                    p.normal_(0, 0.01)
        log_prob = flow.log_prob

        def sample() -> None:
            flow.sample(args.batch_size)

    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=5e-5)

    def train_step() -> None:
        loss = -log_prob(y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def sample_pass() -> None:
        with torch.no_grad():
            sample()

    if args.what == "sample":
        flow.eval()  # as `rgflow sample` and `rgflow bench` sample
    fn = train_step if args.what == "train" else sample_pass
    for _ in range(args.warmup):
        fn()
    start = time.perf_counter()
    for _ in range(args.steps):
        fn()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": args.steps * args.batch_size / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "params": sum(p.numel() for p in params),
    }


def _measure(args: argparse.Namespace, who: str, what: str) -> dict:
    command = [sys.executable, __file__, "--worker", who, "--what", what]
    for key in ("ref_code", "preset", "batch_size", "steps", "warmup", "kernel"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.tune_reference_malloc:
        command.append("--tune-reference-malloc")
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"error: {who} {what} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref-code", default=os.environ.get("RGFLOW_REFERENCE_CODE"))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--kernel",
        choices=("fast", "compiled"),
        help="rgflow's kernels (default: what the preset trains with; compiling happens in "
        "the warm-up steps)",
    )
    parser.add_argument(
        "--only", choices=("train", "sample"), help="measure one of the two (default: both)"
    )
    parser.add_argument(
        "--tune-reference-malloc",
        action="store_true",
        help="give the paper's code the allocator settings rgflow's command sets "
        "(rgflow_core.allocator); by default it runs with glibc's",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=("rgflow", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--what", choices=("train", "sample"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ref_code is None or not (Path(args.ref_code) / "layers" / "mera.py").is_file():
        raise SystemExit(
            "error: give the paper's code folder (its layers/mera.py) with --ref-code DIR or "
            "RGFLOW_REFERENCE_CODE; it is never downloaded"
        )
    if args.kernel is None:
        from rgflow_core.config import load_preset
        from rgflow_core.device import training_kernel

        args.kernel = training_kernel(load_preset(args.preset).train.compile, "cpu")
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    result: dict = {
        "command": "python benchmarks/reference_speed.py --ref-code REF "
        f"--preset {args.preset} --batch-size {args.batch_size} --steps {args.steps} "
        f"--pairs {args.pairs} --kernel {args.kernel}"
        + (f" --only {args.only}" if args.only else "")
        + (" --tune-reference-malloc" if args.tune_reference_malloc else ""),
        "preset": args.preset,
        "kernel": args.kernel,
        "batch_size": args.batch_size,
        "threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    measured = (args.only,) if args.only else ("train", "sample")
    for what in measured:
        runs: dict[str, list[dict]] = {"rgflow": [], "reference": []}
        for _ in range(args.pairs):
            for who in ("rgflow", "reference"):
                runs[who].append(_measure(args, who, what))
                print(f"{what} {who}: {runs[who][-1]['images_per_s']:.1f} images/s", flush=True)
        ratios = [
            a["images_per_s"] / b["images_per_s"]
            for a, b in zip(runs["rgflow"], runs["reference"], strict=True)
        ]
        result[what] = {
            "rgflow_images_per_s": [r["images_per_s"] for r in runs["rgflow"]],
            "reference_images_per_s": [r["images_per_s"] for r in runs["reference"]],
            "ratio_per_pair": ratios,
            "ratio_median": statistics.median(ratios),
            "peak_rss_gb": {who: max(r["peak_rss_gb"] for r in rs) for who, rs in runs.items()},
            "malloc_tuned": {who: rs[0]["malloc_tuned"] for who, rs in runs.items()},
            "params": {who: rs[0]["params"] for who, rs in runs.items()},
        }
    result["summary"] = {
        what: f"rgflow {result[what]['ratio_median']:.2f}x the paper's code "
        f"(pairs: {', '.join(f'{r:.2f}' for r in result[what]['ratio_per_pair'])})"
        for what in measured
    }
    assert all(math.isfinite(result[what]["ratio_median"]) for what in measured)
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
