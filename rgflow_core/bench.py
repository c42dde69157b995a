"""Speed and memory figures of a model configuration (behind `rgflow bench`).

FLOPs are counted analytically (2 per multiply-add of every Linear; elementwise work is
not counted), so "fraction of matmul peak" says how close the training step comes to
spending all its time in matrix multiplication on this machine.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch

from rgflow_core.config import ModelConfig
from rgflow_core.flow import build_model
from rgflow_core.preprocess import bits_per_dim, dequantize


def forward_flops(cfg: ModelConfig) -> int:
    """Matmul FLOPs of one forward pass of one image."""
    D = cfg.channels * cfg.kernel_size**2
    widths = [D] + [cfg.n_hidden] * cfg.n_mlp + [D]
    macs_net = cfg.n_res * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    if cfg.subnet == "rnvp":
        # each pass reads half of the block and writes the other half: the first Linear
        # of the first residual block and the last of the last one are half as wide
        macs_net -= (D // 2) * widths[1] + widths[-2] * (D // 2)
        macs_layer = 2 * 2 * macs_net  # two passes (mask, complement) x two nets (s, t)
    else:
        macs_layer = 2 * macs_net  # one pass x two nets
    blocks = 0
    for h, n_layers in enumerate(cfg.n_layers):
        per_side = cfg.image_size // 2**h // cfg.kernel_size
        blocks += 2 * n_layers * per_side**2  # disentangler + decimator
    return 2 * macs_layer * blocks


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured float32 matmul throughput of this machine (GFLOP/s)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    _sync(device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


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
    progress=None,
) -> BenchResult:
    """Time training steps and sampling of a randomly initialised model.

    Arguments:
        progress: optional callable(message) told what is being measured.
    """
    device = torch.device(device)
    say = progress or (lambda message: None)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    model.checkpointing = checkpointing
    params = sum(p.numel() for p in model.parameters())
    # perturb the zero gains so that the timed model is not a trivial identity
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gain" in name:
                p.normal_(0, 0.01)
    # the fused (single-kernel) AdamW: a per-parameter loop costs as much as the step itself
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=5e-2, fused=True)
    model.compile_blocks(compile)
    shape = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            y, ladj_pre = model.preprocess(dequantize(images))
            z, ladj = model(y)
            logp = model.prior.log_prob(z.float()) + ladj.float() + ladj_pre
        loss = bits_per_dim(logp, cfg.dims).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    say("training step (warm-up)")
    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    say(f"training steps x{train_steps}")
    start = time.perf_counter()
    for _ in range(train_steps):
        step()
    _sync(device)
    train_ips = train_steps * batch_size / (time.perf_counter() - start)
    peak = _peak_memory_gb(device)

    say("sampling")
    model.eval()
    with torch.no_grad():
        model.decode(model.sample_latents(batch_size))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(sample_batches):
            model.decode(model.sample_latents(batch_size))
        _sync(device)
    sample_ips = sample_batches * batch_size / (time.perf_counter() - start)

    say("matmul peak")
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
        checkpointing=checkpointing,
        compile=compile,
        amp=amp,
    )
