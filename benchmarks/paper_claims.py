"""The paper's claims as numbers, for trained MSDS runs: test bpd, scale separation (the
linear probe) and mixing fidelity, one JSON file per run under benchmarks/results/.

For each run folder it runs the tool's own commands, `rgflow probe --json` and
`rgflow mix-fidelity --json`, on the run's `last.safetensors`, and records them with the
exact command lines, the checkpoint's fingerprint, the training curve from
`metrics.jsonl` and the command that trained the run (`RUN/command.txt`, if present).

    python benchmarks/paper_claims.py runs/quick-msds1-laplace runs/quick-msds1-gaussian \\
        --data-root data/quick --pairs 200 --max-images 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from rgflow_core.checkpoint import load_model
from rgflow_core.latents import model_fingerprint


def _rgflow(args: list[str]) -> tuple[str, dict]:
    """Run `rgflow ARGS --json`; return the command line and its JSON answer."""
    command = [sys.executable, "-m", "rgflow_cli", *args, "--json"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{shlex.join(command)} failed: {out.stderr.strip()}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("{"))
    return shlex.join(["rgflow", *args, "--json"]), json.loads(line)


def claims(run: Path, data_root: str, pairs: int, max_images: int) -> dict:
    settings = yaml.safe_load((run / "config.yaml").read_text())
    checkpoint = run / "checkpoints" / "last.safetensors"
    dataset = settings["dataset"]
    curve = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    probe_cmd, probe = _rgflow(
        ["probe", "-c", str(checkpoint), "--data-root", data_root, "--dataset", dataset,
         "--max-images", str(max_images), "-o", f"{run}/probe.png"]
    )  # fmt: skip
    fidelity_cmd, fidelity = _rgflow(
        ["mix-fidelity", "-c", str(checkpoint), "--data-root", data_root, "--dataset", dataset,
         "--pairs", str(pairs)]
    )  # fmt: skip
    command_file = run / "command.txt"
    return {
        "run": run.name,
        "dataset": dataset,
        "prior": settings["prior"],
        "train_command": command_file.read_text().strip() if command_file.is_file() else None,
        "checkpoint": str(checkpoint),
        "fingerprint": model_fingerprint(load_model(checkpoint)),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "settings": settings,
        "curve": [
            {k: r.get(k) for k in ("epoch", "step", "train_bpd", "test_bpd", "images_per_s")}
            for r in curve
        ],
        "test_bpd": curve[-1]["test_bpd"],
        "probe": {"command": probe_cmd, **probe},
        "mix_fidelity": {"command": fidelity_cmd, **fidelity},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-root", default="data/quick")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-images", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        result = claims(run, args.data_root, args.pairs, args.max_images)
        path = args.out / f"claims-{run.name}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}: test bpd {result['test_bpd']:.4f}")


if __name__ == "__main__":
    main()
