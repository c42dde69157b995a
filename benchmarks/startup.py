"""How long `rgflow` takes to answer `--help`, `--version` and `CMD --help`.

Each command line runs `--runs` times; the figures are the median and the maximum wall
time of a fresh process. With `--before DIR` (a checkout of an older rgflow) the same
command lines also run against that tree, alternating with the current one, so that both
see the same machine load. The import profile is `python -X importtime` of the CLI.

    python benchmarks/startup.py --runs 10 --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = [
    ["--help"],
    ["--version"],
    *[
        [name, "--help"]
        for name in (
            "train", "eval", "sample", "encode", "decode", "mix", "receptive-field",
            "traverse", "walk", "probe", "inpaint", "info", "make-msds", "bench", "explore",
            "mix-fidelity", "import", "export",
        )
    ],
]  # fmt: skip


def _time(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rgflow_cli.main", *args],
        env=env,
        cwd=tempfile.gettempdir(),  # as a user would: not inside a checkout that shadows it
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _import_profile(env: dict[str, str], top: int = 8) -> dict[str, object]:
    """Total import time of the CLI and its most expensive imports (microseconds)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import rgflow_cli.main"],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            _, cumulative, name = line[len("import time:") :].split("|")
            rows.append((int(cumulative), name.strip()))
    total = max((c for c, n in rows if n == "rgflow_cli.main"), default=0)
    heavy = sorted(rows, reverse=True)[:top]
    return {"rgflow_cli.main_us": total, "largest_us": [{"module": n, "us": c} for c, n in heavy]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", help="an older checkout to compare against")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    trees = {"current": {**os.environ}}
    if args.before:
        trees["before"] = {**os.environ, "PYTHONPATH": args.before}
    times: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for _ in range(args.runs):
        for command in COMMANDS:
            for tree, env in trees.items():  # alternate, so both see the same load
                times[tree].setdefault(" ".join(command), []).append(_time(command, env))
    report = {"runs": args.runs, "python": sys.version.split()[0], "trees": {}}
    for tree, env in trees.items():
        per_command = {
            cmd: {"median_s": statistics.median(t), "max_s": max(t)}
            for cmd, t in times[tree].items()
        }
        report["trees"][tree] = {"commands": per_command, "imports": _import_profile(env)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
