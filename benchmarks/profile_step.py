"""Where the time of one training step and one sampling pass goes, by kind of work.

    python benchmarks/profile_step.py --preset quick --batch-size 32 --out benchmarks/results
    python benchmarks/profile_step.py --preset celeba32 --batch-size 64 --out benchmarks/results

Runs a few warm-up steps of a randomly initialised model of the preset's architecture
(the same step as `rgflow bench`: dequantise, forward, backward, clip, fused AdamW),
then profiles `--steps` training steps and, in eval mode, `--steps` sampling passes with
torch.profiler (with the allocator settings of the `rgflow` command) and sorts every
operator's self time into kinds:

* matmul: mm, bmm, addmm, baddbmm and the like (the FLOPs the model exists for);
* elementwise: activations, adds, multiplies, reductions, the Adam-free arithmetic;
* fused elementwise (compiled): with the compiled kernel, Inductor's generated C++ loops
  (the matmuls inside a compiled graph still count as matmul);
* layout: copies and gathers between the image and the block layout (copy_, cat,
  index_select, roll, ...);
* allocation: empty/zeros/... tensor creation;
* optimizer: the fused AdamW kernel and gradient clipping's norms;
* other ops: everything else recorded;
* outside ops: the wall time no operator accounts for: Python, the dispatcher, autograd's
  bookkeeping.

With `--kernels`, Inductor records each of its generated loops as an operator of its own
(`cpp.enable_kernel_profile`), and the training step's loops are listed one by one, calls
and time per step: which fused chains the "fused elementwise" share is made of. Recording
them slows the step (about 90 instead of 70 ms for quick at batch 64): read the loops'
shares of their total, and take the kinds from a run without `--kernels`.

Writes `profile-PRESET-bBATCH.json` (the kinds, the top operators, the wall times) and a
Markdown table beside it. The shares are what to read; absolute times vary with load.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from rgflow_core.allocator import tune_malloc
from rgflow_core.bench import _random_model, forward_flops, matmul_gflops
from rgflow_core.config import load_preset
from rgflow_core.device import training_kernel
from rgflow_core.preprocess import dequantize, image_bpd

KINDS = {
    "matmul": ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "addbmm", "_mkldnn"),
    "optimizer": ("_fused_adamw", "adamw", "_foreach", "norm", "linalg_vector_norm"),
    "layout": ("copy_", "cat", "index_select", "roll", "gather", "scatter", "clone",
               "contiguous", "index", "stack", "flip", "_to_copy", "as_strided_scatter"),
    "allocation": ("empty", "zeros", "ones", "full", "empty_strided", "empty_like",
                   "zeros_like", "resize_", "fill_", "zero_"),
}  # fmt: skip
ELEMENTWISE = ("add", "sub", "mul", "div", "sigmoid", "tanh", "exp", "log", "sum", "mean",
               "neg", "abs", "pow", "sqrt", "rsqrt", "where", "clamp", "silu", "softplus",
               "logit", "threshold", "sign", "reciprocal", "lerp", "addcmul", "addcdiv",
               "isfinite", "logical", "lt", "gt", "eq", "ne", "rand", "uniform", "max", "min",
               "_backward")  # fmt: skip


def kind_of(op: str) -> str:
    if op.startswith("## Call CompiledFxGraph") or is_inductor_loop(op):
        return "fused elementwise (compiled)"  # Inductor's generated loops (not its matmuls)
    name = op.removeprefix("aten::")
    for kind, names in KINDS.items():
        if name in names or any(name.startswith(n + "_") and kind != "allocation" for n in names):
            return kind
    if any(name == n or name.startswith(n) or name.endswith(n) for n in ELEMENTWISE):
        return "elementwise"
    return "other ops"


def is_inductor_loop(op: str) -> bool:
    """An operator that `--kernels` records: one of Inductor's generated C++ loops."""
    return re.match(r"graph_\d+_cpp_fused", op) is not None


def inductor_loops(prof, steps: int) -> list[dict]:
    """Inductor's loops, the same loop of every graph together, slowest first."""
    loops: dict[str, list[float]] = {}
    for e in prof.key_averages():
        if is_inductor_loop(e.key):
            name = re.sub(r"^graph_\d+_", "", e.key)
            seconds, calls = loops.setdefault(name, [0.0, 0])
            loops[name] = [seconds + e.self_cpu_time_total / 1e6, calls + e.count]
    return [
        {"loop": name, "seconds_per_call": s / steps, "calls_per_call": c / steps}
        for name, (s, c) in sorted(loops.items(), key=lambda kv: -kv[1][0])
    ]


def profile_pass(fn, steps: int) -> dict:
    """Profile `steps` calls of `fn`: self CPU time by kind, top operators, wall time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = time.perf_counter() - start
    by_kind: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        if e.key.startswith("autograd::") or e.key.startswith("ProfilerStep"):
            continue
        seconds = e.self_cpu_time_total / 1e6
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + seconds
        ops.append((e.key, seconds, e.count))
    accounted = sum(by_kind.values())
    by_kind["outside ops (Python, dispatcher, autograd)"] = max(wall - accounted, 0.0)
    ops.sort(key=lambda t: -t[1])
    return {
        "inductor_loops": inductor_loops(prof, steps),
        "wall_seconds_per_call": wall / steps,
        "kinds_seconds_per_call": {k: v / steps for k, v in sorted(by_kind.items())},
        "kinds_share": {k: v / wall for k, v in sorted(by_kind.items())},
        "top_ops": [
            {
                "op": k,
                "kind": kind_of(k),
                "seconds_per_call": s / steps,
                "calls_per_call": c / steps,
            }
            for k, s, c in ops[:25]
        ],
        "op_calls_per_call": sum(c for _, _, c in ops) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tag", default="", help="added to the file names (e.g. before)")
    parser.add_argument(
        "--kernel", choices=("fast", "compiled"), help="default: what the preset trains with"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--kernels", action="store_true", help="time each of Inductor's generated loops"
    )
    args = parser.parse_args()
    if args.kernels:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    malloc_tuned = tune_malloc()  # as the rgflow command does

    preset = load_preset(args.preset)
    cfg = preset.model
    if args.kernel is None:
        args.kernel = training_kernel(preset.train.compile, "cpu")
    model = _random_model(cfg, torch.device("cpu"))
    model.kernel = args.kernel
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    shape = (args.batch_size, cfg.channels, cfg.image_size, cfg.image_size)
    images = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )

    def train_step() -> None:
        loss = image_bpd(model, dequantize(images)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    @torch.no_grad()
    def sample_pass() -> None:
        model.decode(model.sample_latents(args.batch_size))

    for _ in range(args.warmup):
        train_step()
    train_profile = profile_pass(train_step, args.steps)
    model.eval()  # as `rgflow sample` and `rgflow bench` sample (the evaluation weights kept)
    for _ in range(args.warmup):
        sample_pass()
    sample_profile = profile_pass(sample_pass, args.steps)
    flops = forward_flops(cfg)
    peak = matmul_gflops(torch.device("cpu"))
    result = {
        "command": f"python benchmarks/profile_step.py --preset {args.preset} "
        f"--batch-size {args.batch_size} --steps {args.steps} --kernel {args.kernel}"
        + (" --kernels" if args.kernels else ""),
        "preset": args.preset,
        "kernel": args.kernel,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "matmul_gflops_measured": peak,
        "forward_gflop_per_image": flops / 1e9,
        "malloc_tuned": malloc_tuned,
        "train_step": train_profile,
        "sample_pass": sample_profile,
    }
    for name, passes in (("train_step", 3), ("sample_pass", 1)):
        r = result[name]
        images_per_s = args.batch_size / r["wall_seconds_per_call"]
        r["images_per_s"] = images_per_s
        r["fraction_of_matmul_rate"] = passes * flops * images_per_s / (peak * 1e9)
    stem = f"profile-{args.preset}-b{args.batch_size}{'-' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"# Where the time goes: {r['preset']}, batch {r['batch_size']}, {r['threads']} threads, "
        f"{r.get('kernel', 'fast')} kernel",
        "",
        f"`{r['command']}` (torch {r['torch']}; measured matmul rate "
        f"{r['matmul_gflops_measured']:.0f} GFLOP/s)",
        "",
        "| kind | training step: ms | share | sampling pass: ms | share |",
        "|---|---|---|---|---|",
    ]
    t, s = r["train_step"], r["sample_pass"]
    for kind in sorted(set(t["kinds_share"]) | set(s["kinds_share"])):
        lines.append(
            f"| {kind} | {1e3 * t['kinds_seconds_per_call'].get(kind, 0):.1f} | "
            f"{100 * t['kinds_share'].get(kind, 0):.0f}% | "
            f"{1e3 * s['kinds_seconds_per_call'].get(kind, 0):.1f} | "
            f"{100 * s['kinds_share'].get(kind, 0):.0f}% |"
        )
    lines += [
        f"| **wall** | **{1e3 * t['wall_seconds_per_call']:.1f}** | | "
        f"**{1e3 * s['wall_seconds_per_call']:.1f}** | |",
        "",
        f"Training: {t['images_per_s']:.0f} images/s, {100 * t['fraction_of_matmul_rate']:.0f}% "
        f"of the matmul rate, {t['op_calls_per_call']:.0f} operator calls per step. "
        f"Sampling: {s['images_per_s']:.0f} images/s, "
        f"{100 * s['fraction_of_matmul_rate']:.0f}% of the matmul rate, "
        f"{s['op_calls_per_call']:.0f} operator calls per pass.",
        "",
        "Top operators of the training step (self time):",
        "",
        "| op | kind | ms | calls |",
        "|---|---|---|---|",
    ]
    for op in t["top_ops"][:12]:
        lines.append(
            f"| `{op['op']}` | {op['kind']} | {1e3 * op['seconds_per_call']:.2f} | "
            f"{op['calls_per_call']:.0f} |"
        )
    loops = t.get("inductor_loops")
    if loops:
        total = sum(loop["seconds_per_call"] for loop in loops)
        lines += [
            "",
            f"Inductor's loops in the training step ({1e3 * total:.1f} ms; the name lists "
            "the operators each fuses):",
            "",
            "| loop | ms | share | calls |",
            "|---|---|---|---|",
        ]
        for loop in loops:
            lines.append(
                f"| `{loop['loop']}` | {1e3 * loop['seconds_per_call']:.2f} | "
                f"{100 * loop['seconds_per_call'] / total:.0f}% | {loop['calls_per_call']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
