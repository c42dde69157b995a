"""Everything rgflow does on a GPU, checked in one run that writes one JSON file.

GPU time is lent in minutes, so this script is prepared to run once, unattended, in under
8 minutes on one H100/H200-class GPU. Every step is timed and recorded with its command;
a step that fails records its error and the script goes on. The JSON file is rewritten
after every step, so a run cut short still leaves what it found.

    python benchmarks/gpu_check.py --out gpu_check.json [--ref-code RG-Flow/code]
    python benchmarks/gpu_check.py --device cpu --dry-run --out check.json

The steps: the quick preset trained for one epoch in float32, with `--amp bf16`, with
`--deterministic` (twice: the weights must agree bitwise) and with `--compile`; eval,
sample (CUDA against CPU for one seed), an encode/decode round trip (pixel-exact), mix,
inpaint, receptive-field and probe on the trained model; the CUDA and CPU log-densities
of one checkpoint; `rgflow bench --preset celeba32` at batch 64 and at the largest batch
that fits, in float32, bf16 and compiled, with the model's FLOP/s as a fraction of the
GPU's dense bf16 peak; and, given the paper's code (`--ref-code`, the folder holding its
main.py), the same architecture's training and sampling speed under it, side by side.

`--dry-run` runs the same steps at tiny sizes (and without `--compile`, which wants a C++
toolchain and minutes on a CPU); the test suite runs it with `--device cpu`, so the
script cannot rot while no GPU is at hand. Commands run in this process, except those
that must start clean (the batch-size search, compiled runs, the paper's code).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from rgflow_core.files import atomic_write_bytes, strict_json  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s; the
# first name found in the GPU's name wins. Others use the bf16 matmul rate measured here.
BF16_PEAK = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


class Failed(Exception):
    """A step ran but its check did not hold; `result` holds what it measured."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class Sizes:
    """What each step works on: the real sizes, or tiny ones for a dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        tiny = ["n_layers=[1,1,1,1]", "n_res=1", "n_mlp=1", "n_hidden=8"]
        # the quick preset, as shipped (its msds1 set is generated on first use), with the
        # eager kernels: `train_compiled` times its compiled pass
        self.train = ["--preset", "quick", "--epochs", "1"]
        self.train_sets = ["train_size=64", "test_size=16", *tiny] if dry_run else []
        if dry_run:
            self.train += ["--batch-size", "16"]
        # a shorter run for the deterministic pair
        self.short_sets = self.train_sets if dry_run else ["train_size=4096", "test_size=256"]
        self.samples = 8 if dry_run else 16
        self.inpaint_steps = 5 if dry_run else 100
        self.rf_samples = 2 if dry_run else 8
        self.probe_images = 16 if dry_run else 4000
        self.bench = ["--preset", "celeba32"]
        self.bench_sets = tiny if dry_run else []
        self.bench_batch = 4 if dry_run else 64
        self.bench_most = 8 if dry_run else 16384  # the search for the largest batch stops here
        self.bench_steps = ["--steps", "1", "--sample-batches", "1"] if dry_run else []
        self.ref_args = (
            ["--nlayers", "1", "--nresblocks", "1", "--nmlp", "1", "--nhidden", "8"]
            if dry_run
            else ["--nlayers", "8,6,4,2", "--nresblocks", "4", "--nmlp", "2", "--nhidden", "512"]
        )
        self.ref_steps = 1 if dry_run else 5


class GPUCheck:
    """Runs the steps, records each, and keeps the JSON file up to date."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device, self.sizes = args, args.device, Sizes(args.dry_run)
        self.out = Path(args.out).resolve()
        # data and runs go to a scratch folder, not beside the report: only the report is
        # meant to travel back from a lent machine
        work = args.work or tempfile.mkdtemp(prefix="rgflow-gpu-check-")
        self.work = Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.report: dict[str, Any] = {
            "script": "benchmarks/gpu_check.py",
            "argv": sys.argv[1:],
            "device": self.device,
            "dry_run": args.dry_run,
            "work": str(self.work),
            "steps": {},
        }

    # --- bookkeeping ------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], dict[str, Any]], optional: bool = False) -> None:
        """Run one step: its result, or its error, joins the report (written at once)."""
        steps = self.report["steps"]
        left = self.args.budget - (time.monotonic() - self.started)
        if optional and left < 0:
            steps[name] = {"ok": None, "skipped": f"over the {self.args.budget:.0f} s budget"}
            self.write()
            return
        print(f"[{time.monotonic() - self.started:6.0f} s] {name}", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            entry = {"ok": True, **fn()}
        except Failed as err:
            entry = {"ok": False, "error": str(err), **err.result}
        except Exception as err:  # every failure is a finding: record it and go on
            entry = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        entry["seconds"] = round(time.monotonic() - start, 2)
        steps[name] = entry
        if not entry["ok"]:
            print(f"    failed: {entry['error'][:300]}", file=sys.stderr, flush=True)
        self._release_memory()
        self.write()

    def time_left(self) -> float:
        """Seconds a fresh process may still run before the hard deadline."""
        return max(10.0, self.args.deadline - (time.monotonic() - self.started))

    def skip(self, name: str, why: str) -> None:
        self.report["steps"][name] = {"ok": None, "skipped": why}
        self.write()

    def write(self) -> None:
        steps = self.report["steps"].values()
        self.report["summary"] = {
            "passed": sum(s["ok"] is True for s in steps),
            "failed": sum(s["ok"] is False for s in steps),
            "skipped": sum(s["ok"] is None for s in steps),
            "seconds": round(time.monotonic() - self.started, 1),
        }
        atomic_write_bytes(self.out, (strict_json(self.report, indent=1) + "\n").encode())

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- running the command line -----------------------------------------------------------

    def rgflow(self, *args: Any, isolated: bool = False, check: bool = True) -> dict[str, Any]:
        """Run `rgflow ARGS`: here, or in a fresh process (`isolated`). Returns the command,
        exit code and output (and the JSON it printed, if any); a failure raises `Failed`
        unless `check` is False."""
        argv = [str(a) for a in args]
        command = shlex.join(["rgflow", *argv])
        if isolated:
            path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "rgflow_cli", *argv], capture_output=True,
                    text=True, env=env, cwd=self.work, check=False, timeout=self.time_left(),
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise Failed(f"{command} ran past the deadline", {"command": command}) from None
            code, output = done.returncode, done.stdout + done.stderr
        else:
            code, output = _in_process(argv, self.work)
        result: dict[str, Any] = {"command": command, "exit": code}
        lines = [line for line in output.splitlines() if line.strip()]
        printed = next((line for line in reversed(lines) if line.startswith("{")), None)
        if printed is not None:
            with contextlib.suppress(ValueError):
                result["json"] = json.loads(printed)
        if code != 0:
            result["output"] = "\n".join(lines[-8:])
            if check:
                raise Failed(f"{command} exited {code}: {lines[-1] if lines else ''}", result)
        return result

    # --- the steps --------------------------------------------------------------------------

    def environment(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
        }
        if self.device.startswith("cuda"):
            dev = torch.device(self.device)
            props = torch.cuda.get_device_properties(dev)
            found |= {
                "gpu": props.name,
                "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                "gpus": torch.cuda.device_count(),
            }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if smi.returncode == 0:
                first = smi.stdout.strip().splitlines()[0].split(", ")
                found |= {"nvidia_smi": smi.stdout.strip(), "driver": first[1]}
        self.report["gpu"] = {k: found.get(k) for k in ("gpu", "driver", "capability")}
        self.report["versions"] = {k: found.get(k) for k in ("torch", "cuda", "cudnn")}
        return found

    def train(self, name: str, *extra: str, sets: list[str] | None = None, **kw) -> dict:
        """`rgflow train` of the quick preset in WORK/runs/NAME; its last epoch's record."""
        s = self.sizes
        sets = s.train_sets if sets is None else sets
        args = ["train", *s.train, "--device", self.device, "--out", "runs", "--name", name]
        args += ["--data-root", "data/quick", "-q", *extra]
        if "--compile" not in extra:
            args.append("--no-compile")
        for item in sets:
            args += ["--set", item]
        result = self.rgflow(*args, **kw)
        metrics = self.work / "runs" / name / "metrics.jsonl"
        result["record"] = json.loads(metrics.read_text().splitlines()[-1])
        return result

    def checkpoint(self, name: str = "fp32") -> Path:
        path = self.work / "runs" / name / "checkpoints" / "last.safetensors"
        if not path.is_file():
            raise Failed(f"{path} is missing (its training failed)", {})
        return path

    def deterministic(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        s, runs = self.sizes, []
        try:  # on a GPU in fresh processes: cuBLAS reads its workspace setting at start-up
            for k in (1, 2):
                name, isolated = f"deterministic-{k}", not s.dry_run
                runs.append(
                    self.train(name, "--deterministic", sets=s.short_sets, isolated=isolated)
                )
        finally:
            torch.use_deterministic_algorithms(False)
        a, b = (load_file(str(self.checkpoint(f"deterministic-{k}"))) for k in (1, 2))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        result = {"runs": runs, "bitwise_equal": same}
        if not same:
            raise Failed("two --deterministic runs ended on different weights", result)
        return result

    def evaluate(self) -> dict[str, Any]:
        c = self.checkpoint()
        fp32 = self.rgflow("eval", "-c", c, "--device", self.device, "--json")
        bf16 = self.rgflow("eval", "-c", c, "--device", self.device, "--json", "--amp", "bf16")
        gap = abs(fp32["json"]["bpd"] - bf16["json"]["bpd"])
        return {"fp32": fp32, "bf16": bf16, "bf16_bpd_gap": gap}

    def sample(self) -> dict[str, Any]:
        """The same seed on the GPU and the CPU: the same latents, so (nearly) the same
        pixels; the GPU's samples are the images the next steps use."""
        c, n = self.checkpoint(), self.sizes.samples
        runs = {}
        for where in (self.device, "cpu"):
            folder = self.work / f"samples-{where.replace(':', '')}"
            runs[where] = self.rgflow(
                "sample", "-c", c, "-n", n, "--seed", 1, "--device", where,
                "-o", folder / "grid.png", "--out-dir", folder,
            )  # fmt: skip
        from rgflow_core.images import read_images

        L = _model_size(c)
        pixels = [
            read_images(sorted((self.work / f"samples-{w.replace(':', '')}").glob("sample_*.png")),
                        3, L).int()
            for w in (self.device, "cpu")
        ]  # fmt: skip
        diff = (pixels[0] - pixels[1]).abs()
        result = {
            "runs": runs,
            "pixels_equal_fraction": float((diff == 0).float().mean()),
            "max_pixel_difference": int(diff.max()),
        }
        if result["max_pixel_difference"] > 8:  # rounding differs; other latents would not
            raise Failed("the same seed gave other images on the GPU than on the CPU", result)
        return result

    def _images(self, count: int) -> list[Path]:
        found = sorted((self.work / f"samples-{self.device.replace(':', '')}").glob("sample_*"))
        if len(found) < count:
            raise Failed("the sample step left no images to work on", {})
        return found[:count]

    def codec(self) -> dict[str, Any]:
        from rgflow_core.images import read_images

        c, images = self.checkpoint(), self._images(self.sizes.samples)
        z, back = self.work / "latents.safetensors", self.work / "decoded"
        encode = self.rgflow("encode", "-c", c, *images, "-o", z, "--device", self.device)
        decode = self.rgflow("decode", "-c", c, z, "--out-dir", back, "--device", self.device)
        L = _model_size(c)
        before = read_images(images, 3, L)
        after = read_images([back / p.name for p in images], 3, L)
        result = {"encode": encode, "decode": decode, "images": len(images)}
        result["pixel_exact"] = bool(torch.equal(before, after))
        if not result["pixel_exact"]:
            raise Failed("decode(encode(x)) is not x on the GPU", result)
        return result

    def mix(self) -> dict[str, Any]:
        a, b = self._images(2)
        return self.rgflow(
            "mix", "-c", self.checkpoint(), a, b, "--scale", 2, "-o", self.work / "mix.png",
            "--grid", self.work / "mix-grid.png", "--device", self.device,
        )  # fmt: skip

    def inpaint(self) -> dict[str, Any]:
        from PIL import Image

        image = self._images(1)[0]
        L = _model_size(self.checkpoint())
        mask = Image.new("L", (L, L), 0)
        mask.paste(255, (L // 4, L // 4, L // 2, L // 2))  # a square hole
        mask.save(self.work / "mask.png")
        return self.rgflow(
            "inpaint", "-c", self.checkpoint(), image, self.work / "mask.png",
            "-o", self.work / "filled.png", "--original", image,
            "--steps", self.sizes.inpaint_steps, "--restarts", 2, "--device", self.device,
        )  # fmt: skip

    def receptive_field(self) -> dict[str, Any]:
        return self.rgflow(
            "receptive-field", "-c", self.checkpoint(), "-o", self.work / "rf.png",
            "--samples", self.sizes.rf_samples, "--device", self.device, "--json",
        )  # fmt: skip

    def probe(self) -> dict[str, Any]:
        return self.rgflow(
            "probe", "-c", self.checkpoint(), "--data-root", self.work / "data/quick",
            "--dataset", "msds1", "--max-images", self.sizes.probe_images,
            "-o", self.work / "probe.png", "--device", self.device, "--json",
        )  # fmt: skip

    def log_density(self) -> dict[str, Any]:
        """One checkpoint's bpd of the same images, with the same (no) noise, on both."""
        from rgflow_core import load_model
        from rgflow_core.images import read_images
        from rgflow_core.preprocess import dequantize, image_bpd

        c = self.checkpoint()
        images = read_images(self._images(self.sizes.samples), 3, _model_size(c))
        x = dequantize(images, noise=False)
        bpd = {}
        for where in (self.device, "cpu"):
            with torch.no_grad():
                bpd[where] = image_bpd(load_model(c, where), x.to(where)).double().cpu()
        gap = float((bpd[self.device] - bpd["cpu"]).abs().max())
        result = {"max_abs_bpd_difference": gap, "mean_bpd": float(bpd["cpu"].mean())}
        # float32 sums over 3072 dimensions: agreement to ~1e-6 relative is rounding
        if gap > 1e-4:
            raise Failed("the GPU and the CPU disagree on the log-density", result)
        return result

    def bench(self, batch: int, *extra: str, isolated: bool = False) -> dict[str, Any]:
        s = self.sizes
        args = ["bench", *s.bench, "--device", self.device, "--batch-size", batch, "--json"]
        args += [*s.bench_steps, "--allow-large", *extra]
        for item in s.bench_sets:
            args += ["--set", item]
        result = self.rgflow(*args, isolated=isolated)
        figures = result["json"]
        model_flops = 3 * figures["forward_gflop_per_image"] * 1e9 * figures["train_images_per_s"]
        result["model_tflops"] = model_flops / 1e12
        peak = self.report.get("bf16_peak_flops")
        result["fraction_of_bf16_peak"] = model_flops / peak if peak else None
        return result

    def largest_batch(self) -> dict[str, Any]:
        """Double the batch from 2 x the first until it fails (each try a fresh process)."""
        s, tried = self.sizes, {}
        batch, largest = 2 * s.bench_batch, s.bench_batch
        while batch <= s.bench_most:
            result = self.rgflow(
                "bench", *s.bench, "--device", self.device, "--batch-size", batch, "--json",
                "--steps", 1, "--sample-batches", 1, "--allow-large",
                *[a for item in s.bench_sets for a in ("--set", item)],
                isolated=True, check=False,
            )  # fmt: skip
            tried[batch] = "fits" if result["exit"] == 0 else result.get("output", "")[-300:]
            if result["exit"] != 0:
                break
            largest, batch = batch, 2 * batch
        self.largest = largest
        return {"largest": largest, "tried": tried}

    def bf16_peak(self) -> dict[str, Any]:
        """The GPU's dense bf16 peak: its data sheet's, and a big bf16 matmul's rate here."""
        name = self.report.get("gpu", {}).get("gpu") or ""
        sheet = next((peak for key, peak in BF16_PEAK if key in name), None)
        n = 1024 if self.sizes.dry_run else 8192
        a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < (0.2 if self.sizes.dry_run else 2.0):
            a @ b
            reps += 1
            if self.device.startswith("cuda") and reps % 8 == 0:
                torch.cuda.synchronize()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        measured = 2 * n**3 * reps / (time.perf_counter() - start)
        self.report["bf16_peak_flops"] = sheet or measured
        return {"data_sheet_flops": sheet, "measured_matmul_flops": measured, "gpu": name}

    def reference(self) -> dict[str, Any]:
        """The paper's code (imported from its folder, never copied) timing the same
        architecture's training step and sampling, in a fresh process."""
        from rgflow_core.bench import forward_flops
        from rgflow_core.config import load_preset, parse_overrides

        s, folder = self.sizes, Path(self.args.ref_code).resolve()
        if not (folder / "main.py").is_file():
            raise Failed(f"{folder} holds no main.py of the paper's code", {})
        cuda = ""  # the paper's args.py sets CUDA_VISIBLE_DEVICES to its --cuda
        if self.device.startswith("cuda"):
            index, visible = (
                torch.device(self.device).index or 0,
                os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
            cuda = visible.split(",")[index] if visible else str(index)
        batch = s.bench_batch
        argv = ["ref", "--cuda", cuda, "--out_dir", "", "--batch_size", str(batch), *s.ref_args]
        harness = REFERENCE_HARNESS.format(argv=argv, steps=s.ref_steps)
        done = subprocess.run(
            [sys.executable, "-c", harness], cwd=folder, capture_output=True, text=True,
            check=False, timeout=self.time_left(),
        )  # fmt: skip
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode or not lines:
            raise Failed("the paper's code did not run", {"output": done.stderr[-2000:]})
        figures = json.loads(lines[-1])
        cfg = load_preset("celeba32", parse_overrides(s.bench_sets)).model
        model_flops = 3 * forward_flops(cfg) * figures["train_images_per_s"]
        peak = self.report.get("bf16_peak_flops")
        ours = self.report["steps"].get("bench_64_fp32", {})
        return {
            "argv": argv,
            **figures,
            "model_tflops": model_flops / 1e12,
            "fraction_of_bf16_peak": model_flops / peak if peak else None,
            "rgflow_train_images_per_s": (ours.get("json") or {}).get("train_images_per_s"),
            "rgflow_sample_images_per_s": (ours.get("json") or {}).get("sample_images_per_s"),
        }

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        s, dev, cuda = self.sizes, self.device, self.device.startswith("cuda")
        self.step("environment", self.environment)
        if cuda and not torch.cuda.is_available():
            self.report["error"] = f"--device {dev}, but torch sees no CUDA GPU here"
            self.write()
            return
        self.step("train_fp32", lambda: self.train("fp32"))
        self.step("train_bf16", lambda: self.train("bf16", "--amp", "bf16"))
        self.step("eval", self.evaluate)
        self.step("sample_gpu_vs_cpu", self.sample)
        self.step("encode_decode", self.codec)
        self.step("mix", self.mix)
        self.step("inpaint", self.inpaint)
        self.step("receptive_field", self.receptive_field)
        self.step("probe", self.probe)
        self.step("log_density_gpu_vs_cpu", self.log_density)
        self.step("train_deterministic", self.deterministic)
        self.step("bf16_peak", self.bf16_peak)
        self.step("bench_64_fp32", lambda: self.bench(s.bench_batch))
        self.step("bench_64_bf16", lambda: self.bench(s.bench_batch, "--amp", "bf16"))
        if self.args.ref_code:
            self.step("paper_code_side_by_side", self.reference, optional=True)
        else:
            self.skip("paper_code_side_by_side", "no --ref-code folder given")
        self.largest = s.bench_batch
        self.step("bench_largest_batch", self.largest_batch, optional=True)
        self.step("bench_largest_fp32", lambda: self.bench(self.largest), optional=True)
        self.step(
            "bench_largest_bf16", lambda: self.bench(self.largest, "--amp", "bf16"), optional=True
        )
        if s.dry_run:
            why = "not in a dry run (torch.compile wants a C++ toolchain and minutes on a CPU)"
            for name in ("train_compiled", "bench_64_compiled", "bench_largest_compiled"):
                self.skip(name, why)
        else:
            compiled = ("--compile",)
            self.step(
                "train_compiled", lambda: self.train("compiled", *compiled, isolated=True),
                optional=True,
            )  # fmt: skip
            self.step(
                "bench_64_compiled", lambda: self.bench(s.bench_batch, *compiled, isolated=True),
                optional=True,
            )  # fmt: skip
            self.step(
                "bench_largest_compiled",
                lambda: self.bench(self.largest, *compiled, isolated=True), optional=True,
            )  # fmt: skip
        self.write()


REFERENCE_HARNESS = """
import json, sys, time, types
# the paper's code imports these for its data and figures, which this timing never uses
for name in ("h5py", "skimage", "skimage.io", "skimage.transform"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.argv = {argv!r}
sys.path.insert(0, ".")
import torch
import main, utils
from args import args

flow = main.build_mera()
flow.train(True)
params = [p for p in flow.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
x = torch.rand(args.batch_size, args.nchannels, args.L, args.L, device=args.device)


def sync():
    if args.device.type == "cuda":
        torch.cuda.synchronize()


def step():  # main.py's training step on one batch
    optimizer.zero_grad()
    y, ldj = utils.logit_transform(x)
    loss = -(flow.log_prob(y) + ldj) / (args.nchannels * args.L**2)
    loss.mean().backward()
    torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
    optimizer.step()


step(); sync()
start = time.perf_counter()
for _ in range({steps}):
    step()
sync()
train = {steps} * args.batch_size / (time.perf_counter() - start)
flow.train(False)
with torch.no_grad():
    flow.sample(args.batch_size); sync()
    start = time.perf_counter()
    flow.sample(args.batch_size); sync()
sample = args.batch_size / (time.perf_counter() - start)
params = sum(p.numel() for p in flow.parameters())
print(json.dumps({{"train_images_per_s": train, "sample_images_per_s": sample,
                  "params": params, "batch_size": args.batch_size,
                  "torch": torch.__version__}}))
"""


def _model_size(checkpoint: Path) -> int:
    from rgflow_core.checkpoint import read_metadata

    return read_metadata(checkpoint)["config"].image_size


def _in_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    """`rgflow ARGV` in this process, in `cwd`: (exit code, stdout and stderr)."""
    from rgflow_cli.main import main

    out, here, saved = io.StringIO(), Path.cwd(), sys.argv
    code: Any = 0
    sys.argv = ["rgflow", *argv]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = saved
        os.chdir(here)
    return (code if isinstance(code, int) else 1), out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The JSON file to write.")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (dry runs).")
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes, no --compile.")
    parser.add_argument("--ref-code", help="The paper's code (the folder of its main.py).")
    parser.add_argument("--work", help="Folder for data and runs (default: a new temp one).")
    parser.add_argument(
        "--budget", type=float, default=400.0,
        help="Seconds after which optional steps are skipped (default 400).",
    )  # fmt: skip
    parser.add_argument(
        "--deadline", type=float, default=470.0,
        help="Seconds after which a fresh process (bench, compile, paper's code) is ended.",
    )  # fmt: skip
    args = parser.parse_args()
    check = GPUCheck(args)
    check.run()
    summary = check.report["summary"]
    print(f"{check.out}: {summary}")
    sys.exit(1 if summary["failed"] or check.report.get("error") else 0)


if __name__ == "__main__":
    main()
