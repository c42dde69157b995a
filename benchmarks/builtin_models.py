"""The trained models shipped in the package: record one from a finished run, or retrain
one from its recorded commands and compare.

    # after training a run with the commands to record (see `rgflow info --models`):
    python benchmarks/builtin_models.py ship msds1 --run runs/quick-msds1-laplace \\
        --command "rgflow train --preset quick --name quick-msds1-laplace -q"

    # retrain a shipped model in a scratch folder, from nothing, and compare its weights:
    python benchmarks/builtin_models.py retrain msds1 [--workdir DIR] [--json FILE]

`ship` copies RUN/checkpoints/last.safetensors into rgflow_core/models/NAME.safetensors
and writes its record in rgflow_core/models/models.json: the commands, the commit they
ran at (this checkout's HEAD unless --commit), the versions and test bpd from the
checkpoint (and `eval_test_bpd`, what `rgflow eval` gives today), the images seen, the
training seconds, the sha256 of the file and of the weights, and the bpd of the run's
first steps. `retrain` runs the recorded commands, in
order, with this environment's `rgflow`, in an empty folder (the MSDS data is generated
there), then reports whether the weights are bitwise the shipped ones and the wall time.
CPU training is deterministic: the same commands give the same weights (the tests check
the first steps' bpd against the record exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rgflow_core.builtin import MANIFEST, file_sha256, models_dir, replay_commands, weights_sha256
from rgflow_core.checkpoint import read_metadata
from rgflow_core.files import atomic_write_bytes, strict_json

REPO = Path(__file__).resolve().parent.parent


def ship(name: str, run: Path, commands: list[str], commit: str | None, note: str) -> dict:
    """Copy a finished run's last checkpoint into the package and record where it came from."""
    source = run / "checkpoints" / "last.safetensors"
    meta = read_metadata(source)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    target = models_dir() / f"{name}.safetensors"
    atomic_write_bytes(target, source.read_bytes())
    commit = (
        commit
        or subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "HEAD"], text=True).strip()
    )
    entry = {
        "file": target.name,
        "dataset": meta["dataset"],
        "prior": meta["config"].prior,
        "preset": meta.get("preset"),
        "commands": commands,
        "commit": commit,
        "rgflow": meta["versions"]["rgflow"],
        "torch": meta["versions"]["torch"],
        "python": meta["versions"]["python"],
        "test_bpd": meta["test_bpd"],
        "eval_test_bpd": _eval_bpd(source),
        "train_bpd": meta["train_bpd"],
        "test_images": meta["data"]["test_images"],
        "epochs": meta["epoch"],
        "steps": meta["step"],
        "images_seen": meta["images"],
        "training_seconds": round(sum(r["seconds"] for r in history), 1),
        "sha256": file_sha256(target),
        "weights_sha256": weights_sha256(target),
        "date": meta["date"],
        "note": note,
        "loss_trace": meta["loss_trace"],
    }
    manifest_path = models_dir() / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    models = manifest.get("models", {})
    models[name] = entry
    manifest = {
        "about": "Trained models shipped with rgflow; benchmarks/builtin_models.py writes "
        "this file and retrains any entry from its commands.",
        "models": dict(sorted(models.items())),
    }
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return entry


def _eval_bpd(checkpoint: Path) -> float:
    """The test bpd `rgflow eval` gives today on the run's own test images (the training
    log's figure was computed by the rgflow of the commit that trained it)."""
    from rgflow_core.checkpoint import load_model
    from rgflow_core.data import read_msds_images
    from rgflow_core.loop import evaluate
    from rgflow_core.run import run_data_config

    data = run_data_config(checkpoint)
    images = read_msds_images(data.data_root, data.dataset, "test", data.test_size)[0]
    return evaluate(load_model(checkpoint), images)


def retrain(name: str, workdir: Path | None) -> dict:
    """Run a shipped model's recorded commands from nothing and compare the weights."""
    manifest = json.loads((models_dir() / MANIFEST).read_text())["models"]
    if name not in manifest:
        raise SystemExit(f"error: no built-in model {name!r}; there are {', '.join(manifest)}")
    entry = manifest[name]
    folder = Path(workdir or tempfile.mkdtemp(prefix=f"rgflow-retrain-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this rgflow
    start = time.perf_counter()
    for command in replay_commands(entry):
        print(f"$ {command}", file=sys.stderr, flush=True)
        subprocess.run(["bash", "-c", command], cwd=folder, env=env, check=True)
    seconds = time.perf_counter() - start
    runs = sorted(folder.glob("runs/*/checkpoints/last.safetensors"))
    if len(runs) != 1:
        raise SystemExit(f"error: expected one run under {folder}/runs, found {len(runs)}")
    meta = read_metadata(runs[0])
    return {
        "model": name,
        "workdir": str(folder),
        "checkpoint": str(runs[0]),
        "wall_seconds": round(seconds, 1),
        "weights_sha256": weights_sha256(runs[0]),
        "weights_identical": weights_sha256(runs[0]) == entry["weights_sha256"],
        "test_bpd": meta["test_bpd"],
        "recorded_test_bpd": entry["test_bpd"],
        "threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_ship = sub.add_parser("ship", help="record a finished run as a built-in model")
    p_ship.add_argument("name")
    p_ship.add_argument("--run", type=Path, required=True)
    p_ship.add_argument("--command", action="append", required=True, dest="commands")
    p_ship.add_argument("--commit", default=None)
    p_ship.add_argument("--note", default="")
    p_retrain = sub.add_parser("retrain", help="retrain a built-in model and compare")
    p_retrain.add_argument("name")
    p_retrain.add_argument("--workdir", type=Path, default=None)
    p_retrain.add_argument("--json", type=Path, default=None, help="also write the result here")
    p_retrain.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if args.action == "ship":
        entry = ship(args.name, args.run, args.commands, args.commit, args.note)
        print(strict_json({k: v for k, v in entry.items() if k != "loss_trace"}))
        return
    result = retrain(args.name, args.workdir)
    print(strict_json(result))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
    if args.workdir is None and not args.keep:
        shutil.rmtree(result["workdir"], ignore_errors=True)
    sys.exit(0 if result["weights_identical"] else 1)


if __name__ == "__main__":
    main()
