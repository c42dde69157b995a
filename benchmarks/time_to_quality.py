"""Test bpd against wall-clock seconds: how good a model a training command gives in how long.

Runs each `rgflow train` command in turn (nothing else should run meanwhile), in a folder
of its own that shares `--data` (so that only the first run, if the data is not there
yet, pays for generating it), and
notes when each epoch's line appears in the run's `metrics.jsonl`: the seconds since the
command started, everything a user waits for included (start-up, compiling, evaluation,
checkpoints and sample grids). Each command compiles from an empty Inductor cache of its
own, as right after install (`--warm-cache`: the machine's cache instead). Writes one JSON
record per command and a figure of all.

    python benchmarks/time_to_quality.py --data data --target 2.2 \\
        --out benchmarks/results/time_to_quality.json \\
        --figure benchmarks/results/time_to_quality.png \\
        "rgflow train --preset quick --name ttq -q"

A command is run through the shell, so `OMP_NUM_THREADS=1 rgflow train ...` works; it
must train one run (its `--name` is read from the command, default the preset's name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def run_name(command: str) -> str:
    words = shlex.split(command)
    for flag in ("--name", "--preset"):
        if flag in words:
            return Path(words[words.index(flag) + 1]).stem
    raise SystemExit(f"cannot tell the run's name from: {command}")


def measure(command: str, data: Path, cold_cache: bool = True, poll: float = 0.5) -> dict:
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        work = Path(tmp)
        (work / "data").symlink_to(data.resolve())
        env = dict(os.environ)
        if cold_cache:  # torch.compile builds every kernel, as on a user's first run
            env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
        metrics = work / "runs" / run_name(command) / "metrics.jsonl"
        curve: list[dict] = []
        start = time.perf_counter()
        proc = subprocess.Popen(command, shell=True, cwd=work, env=env, stdout=subprocess.DEVNULL)
        while True:
            done = proc.poll() is not None
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            now = time.perf_counter() - start
            for line in lines[len(curve) :]:
                record = json.loads(line)
                curve.append(
                    {
                        "seconds": round(now, 1),
                        "epoch": record["epoch"],
                        "images": record["images"],
                        "test_bpd": record["test_bpd"],
                        "images_per_s": round(record["images_per_s"], 1),
                    }
                )
            if done:
                break
            time.sleep(poll)
        if proc.returncode:
            raise SystemExit(f"{command} failed with exit code {proc.returncode}")
        cache = "empty" if cold_cache else "the machine's"
        return {
            "command": command,
            "inductor_cache": cache,
            "total_seconds": round(now, 1),
            "curve": curve,
        }


def plot(results: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        xs = [p["seconds"] / 60 for p in r["curve"]]
        ax.plot(xs, [p["test_bpd"] for p in r["curve"]], marker="o", label=r["command"])
    ax.axhline(target, color="grey", linestyle=":", label=f"{target} bpd")
    ax.axvline(10, color="grey", linestyle="--", label="10 minutes")
    ax.set(xlabel="minutes since the command started", ylabel="test bits per dimension")
    ax.set_title("Test bpd against wall-clock time, one command at a time", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", nargs="+", help="rgflow train commands, run in turn")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the data folder")
    parser.add_argument("--target", type=float, default=2.2, help="the test bpd to reach")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--figure", type=Path, help="PNG of the curves")
    parser.add_argument(
        "--warm-cache", action="store_true", help="compile with the machine's Inductor cache"
    )
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)  # the first run generates its set here
    results = []
    for command in args.commands:
        r = measure(command, args.data, cold_cache=not args.warm_cache)
        below = [p for p in r["curve"] if p["test_bpd"] < args.target]
        r["first_below_target_s"] = below[0]["seconds"] if below else None
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    record = {
        "target_bpd": args.target,
        "torch": torch.__version__,
        "cpu": platform.machine(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": results,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.figure:
        plot(results, args.target, args.figure)


if __name__ == "__main__":
    main()
