"""Speed, memory and FLOP figures (behind `rgflow bench`), and the inpainting cost bench.

FLOPs are counted analytically from the subnet registry (2 per multiply-add of every
Linear as the fast kernels run them; elementwise work is not counted), so "fraction of
matmul peak" says how close the training step comes to spending all its time in matrix
multiplication on this machine.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from rgflow_core.checks import check_int
from rgflow_core.cone import ConeLogProb, full_log_prob
from rgflow_core.config import ModelConfig
from rgflow_core.coupling import SUBNETS
from rgflow_core.device import check_amp, synchronize, training_kernel
from rgflow_core.flow import build_model, check_memory
from rgflow_core.geometry import num_levels
from rgflow_core.inpaint import inpaint
from rgflow_core.preprocess import dequantize, image_bpd

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def forward_flops(cfg: ModelConfig) -> int:
    """Matmul FLOPs of one forward pass of one image."""
    block = SUBNETS[cfg.subnet]
    features = cfg.channels * cfg.kernel_size**2
    macs = 0
    for h, n_layers in enumerate(cfg.n_layers):
        blocks = (cfg.image_size // 2**h // cfg.kernel_size) ** 2
        per_block = block.macs(features, cfg.n_hidden, cfg.n_res, cfg.n_mlp, n_layers)
        macs += 2 * blocks * per_block  # disentangler + decimator
    return 2 * macs


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured float32 matmul throughput of this machine (GFLOP/s)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    synchronize(device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if reps % 4 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _random_model(cfg: ModelConfig, device: torch.device):
    """A model with perturbed gains, so that the timed model is not a trivial identity."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gain" in name:
                p.normal_(0, 0.01)
    return model


@dataclass
class BenchResult:
    """Figures printed by `rgflow bench`."""

    preset: str
    device: str
    batch_size: int
    threads: int
    params: int
    forward_gflop_per_image: float
    train_images_per_s: float
    sample_images_per_s: float
    peak_memory_gb: float
    matmul_gflops: float
    train_fraction_of_matmul_peak: float
    sample_fraction_of_matmul_peak: float
    checkpointing: bool
    compile: bool
    amp: str


def run_bench(
    cfg: ModelConfig,
    *,
    preset: str = "custom",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    train_steps: int = 3,
    sample_batches: int = 2,
    checkpointing: bool = False,
    compile: bool = False,
    amp: str = "off",
    allow_large: bool = False,
    progress: Say = _quiet,
) -> BenchResult:
    """Time training steps and sampling of a randomly initialised model.

    Arguments:
        progress: told what is being measured.
    """
    check_int("batch_size", batch_size, 1, 1 << 14)
    check_int("train_steps", train_steps, 1, 10_000)
    check_int("sample_batches", sample_batches, 1, 10_000)
    device = torch.device(device)
    check_amp(device, amp)
    check_memory(cfg, device, batch_size, allow_large=allow_large)
    model = _random_model(cfg, device)
    model.checkpointing = checkpointing
    model.kernel = training_kernel(compile, device)  # as training falls back
    compile = model.kernel == "compiled"
    params = sum(p.numel() for p in model.parameters())
    # the fused (single-kernel) AdamW: a per-parameter loop costs as much as the step itself
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=5e-2, fused=True)
    shape = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)

    def step() -> None:
        loss = image_bpd(model, dequantize(images), amp=amp == "bf16").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    progress("training step (warm-up)")
    step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    progress(f"training steps x{train_steps}")
    start = time.perf_counter()
    for _ in range(train_steps):
        step()
    synchronize(device)
    train_ips = train_steps * batch_size / (time.perf_counter() - start)
    peak = _peak_memory_gb(device)

    progress("sampling")
    model.eval()
    with torch.no_grad():
        model.decode(model.sample_latents(batch_size))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(sample_batches):
            model.decode(model.sample_latents(batch_size))
        synchronize(device)
    sample_ips = sample_batches * batch_size / (time.perf_counter() - start)

    progress("matmul peak")
    peak_gflops = matmul_gflops(device)
    flops = forward_flops(cfg)
    return BenchResult(
        preset=preset,
        device=str(device),
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        params=params,
        forward_gflop_per_image=flops / 1e9,
        train_images_per_s=train_ips,
        sample_images_per_s=sample_ips,
        peak_memory_gb=peak,
        matmul_gflops=peak_gflops,
        # a training step costs about 3 forward passes (forward + backward)
        train_fraction_of_matmul_peak=3 * flops * train_ips / (peak_gflops * 1e9),
        # decoding a sample costs one pass (the inverse has the forward's matmuls)
        sample_fraction_of_matmul_peak=flops * sample_ips / (peak_gflops * 1e9),
        checkpointing=checkpointing,
        compile=compile,
        amp=amp,
    )


# --- inpainting: cost against image size ------------------------------------------------------


def extend_config(cfg: ModelConfig, image_size: int) -> ModelConfig:
    """`cfg`'s architecture at another image size; extra (coarser) levels copy the top one."""
    H = num_levels(image_size, cfg.kernel_size)
    n_layers = tuple(cfg.n_layers[:H]) + (cfg.n_layers[-1],) * max(0, H - cfg.levels)
    return replace(cfg, image_size=image_size, n_layers=n_layers)


LOOP_STEPS = (5, 45)  # inpaint() runs whose time difference gives the cost of 40 steps
LOOP_REPEATS = 3


@dataclass
class InpaintBenchRow:
    """One image size of `rgflow bench --inpaint`. The loop figures time `inpaint()` itself,
    as the command runs it: Adam, clamping, annealed noise and a progress callback per step."""

    image_size: int
    levels: int
    cone_blocks: int
    full_blocks: int
    cone_ms_per_step: float  # forward + backward + Adam on the cone alone
    full_ms_per_step: float  # the same on the whole image (NaN when not measured)
    loop_ms_per_step: float  # inpaint(): one more step of its loop
    loop_setup_ms: float  # inpaint(): its one-off work (cached pass over the image, start, end)


def _ascent_step(objective: Callable[[torch.Tensor], torch.Tensor], param: torch.Tensor):
    """One Adam step up `objective(param)` (summed over the batch), as a closure."""
    opt = torch.optim.Adam([param], lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (-objective(param).sum()).backward()
        opt.step()

    return step


def _time(fn: Callable[[], None], device: torch.device, budget_s: float, max_reps: int) -> float:
    """Median seconds per call of `fn` after one warm-up call, over about `budget_s` seconds.

    The median, not the mean, so that a busy shared machine's stalls do not count.
    """
    fn()
    synchronize(device)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - begin < budget_s):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _time_loop(
    run: Callable[[int], None], device: torch.device, steps: tuple[int, int], repeats: int
) -> tuple[float, float]:
    """Seconds per step and fixed seconds of `run(n)` (n steps): the difference of the times
    of `steps[1]` and `steps[0]` steps over their difference, and what remains of the
    shorter run; medians over `repeats` pairs, each pair run back to back so that a shared
    machine's slow spells fall on both of its runs."""
    low, high = steps
    run(1)  # warm-up
    per_step, fixed = [], []
    for _ in range(repeats):
        times = []
        for n in (low, high):
            synchronize(device)
            start = time.perf_counter()
            run(n)
            synchronize(device)
            times.append(time.perf_counter() - start)
        step = (times[1] - times[0]) / (high - low)
        per_step.append(step)
        fixed.append(times[0] - low * step)
    return statistics.median(per_step), statistics.median(fixed)


def bench_inpaint(
    cfg: ModelConfig,
    sizes: list[int],
    hole: int = 8,
    *,
    device: torch.device | str = "cpu",
    budget_s: float = 1.0,
    max_reps: int = 50,
    full: bool = True,
    loop_steps: tuple[int, int] = LOOP_STEPS,
    loop_repeats: int = LOOP_REPEATS,
    step_progress: Callable[[int], None] | None = None,
    progress: Say = _quiet,
) -> list[InpaintBenchRow]:
    """Time one inpainting step on the cone vs the whole image, and `inpaint()`'s own loop.

    For each size L, `cfg`'s architecture extended to L (see `extend_config`) is built
    with random, perturbed gains, and a centred `hole` x `hole` square is filled.

    Arguments:
        loop_steps: the two step counts whose times' difference gives the loop's cost.
        loop_repeats: pairs of timed `inpaint()` runs (the median is kept).
        step_progress: the per-step callback handed to `inpaint()` (the command's progress
            bar, say); the default does nothing.
    """
    device = torch.device(device)
    check_int("loop_repeats", loop_repeats, 1, 100)
    low = check_int("loop_steps", loop_steps[0], 1, 100_000)
    check_int("loop_steps", loop_steps[1], low + 1, 100_000)
    for L in sizes:  # all checked before any work
        check_int("sizes", L, cfg.kernel_size, 1024)
        check_int("hole", hole, 1, L)
    rows = []
    for L in sizes:
        sub = extend_config(cfg, L)
        model = _random_model(sub, device).eval().requires_grad_(False)
        mask = torch.zeros(L, L, dtype=torch.bool)
        a = L // 2 - hole // 2
        mask[a : a + hole, a : a + hole] = True
        image = torch.randint(0, 256, (sub.channels, L, L), dtype=torch.uint8)
        y, _ = model.preprocess(dequantize(image.to(device), noise=False))
        progress(f"L={L}: caching the known image")
        cone = ConeLogProb(model, y, mask)
        v = y.flatten(1)[:, cone.hole].unsqueeze(0).clone().requires_grad_(True)
        progress(f"L={L}: cone steps")
        cone_s = _time(_ascent_step(cone, v), device, budget_s, max_reps)
        full_s = float("nan")
        if full:
            y_full = y.unsqueeze(0).clone().requires_grad_(True)
            progress(f"L={L}: full-image steps")
            step = _ascent_step(partial(full_log_prob, model), y_full)
            full_s = _time(step, device, budget_s, max_reps)

        def run(steps: int, model=model, image=image, mask=mask) -> None:
            # noise > 0, so that each step also draws and adds its noise, as --noise does
            generator = torch.Generator().manual_seed(0)
            inpaint(model, image, mask, steps=steps, noise=0.1, generator=generator,
                    progress=step_progress)  # fmt: skip

        progress(f"L={L}: the inpaint() loop")
        loop_s, setup_s = _time_loop(run, device, loop_steps, loop_repeats)
        rows.append(
            InpaintBenchRow(
                image_size=L,
                levels=sub.levels,
                cone_blocks=cone.stats.cone_blocks,
                full_blocks=cone.stats.full_blocks,
                cone_ms_per_step=1e3 * cone_s,
                full_ms_per_step=1e3 * full_s,
                loop_ms_per_step=1e3 * loop_s,
                loop_setup_ms=1e3 * setup_s,
            )
        )
    return rows
