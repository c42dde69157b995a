"""Under real `torchrun` (2 gloo processes): a signal to the group or to one rank stops
every rank at one agreed step with the state saved once and said once, the same command
resumes to exactly the weights of an uninterrupted run, and a refusal on one rank ends
them all with its one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train import TINY

from rgflow_core import distributed
from rgflow_core.errors import UsageError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Launched by torchrun in place of `python -m rgflow_cli`: each step sleeps a little (so
# that a signal lands mid-run) and rank 0 writes the steps done to a file the test
# watches, and each rank that decodes the data says so; RGFLOW_TEST_REFUSE_RANK makes
# that rank's memory check refuse.
ENTRY = """
import os, sys, time
from pathlib import Path

from rgflow_core import data, loop, train
from rgflow_core.errors import UsageError

mark, rank = Path(os.environ["RGFLOW_TEST_MARK"]), int(os.environ["RANK"])
(mark / f"pid-{rank}").write_text(str(os.getpid()))
step = loop.Trainer.step


def slow_step(self, k, epoch):
    done = step(self, k, epoch)
    time.sleep(0.1)
    if rank == 0:
        (mark / "step.tmp").write_text(str(self.progress.step))
        os.replace(mark / "step.tmp", mark / "step")
    return done


def refuse(*args, **kwargs):
    raise UsageError(f"rank {rank} has no memory left")


def load_dataset(*args, **kwargs):
    (mark / f"decoded-{rank}").touch()
    return decode(*args, **kwargs)


decode = data.load_dataset
data.load_dataset = load_dataset
loop.Trainer.step = slow_step
if os.environ.get("RGFLOW_TEST_REFUSE_RANK") == str(rank):
    train.check_memory = refuse

from rgflow_cli.main import main

sys.argv = ["rgflow", *sys.argv[1:]]
main()
"""

PRESET = {**TINY, "epochs": 3}  # 64 images: 8 steps per epoch, 24 in all


@pytest.fixture
def job(tmp_path):
    """job(run, stop=None, at=0, **env) -> (exit code, output lines): `rgflow train` under
    torchrun; `stop` is how to signal it once rank 0 has taken `at` steps."""
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("test", 16)):
        (tmp_path / "imgs" / split).mkdir(parents=True)
        base = torch.randint(60, 200, (n,), generator=gen)
        for i in range(n):
            pixels = (base[i] + torch.randint(-20, 20, (8, 8), generator=gen)).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "imgs" / split / f"{i}.png")
    (tmp_path / "tiny.yaml").write_text(json.dumps(PRESET))
    (tmp_path / "entry.py").write_text(ENTRY)

    def run(name: str, stop: str | None = None, at: int = 0, **extra: str):
        mark = tmp_path / f"mark-{name}"
        mark.mkdir(exist_ok=True)
        (mark / "step").unlink(missing_ok=True)
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, RGFLOW_TEST_MARK=str(mark))
        env.update(extra)
        args = ["train", "--preset", "tiny.yaml", "--data-root", "imgs", "--out", "runs"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", "entry.py", *args, "--name", name, "--device", "cpu", "-q"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own group, as a terminal's foreground job is
        )  # fmt: skip
        try:
            if stop is not None:
                _wait_for_step(mark, at, proc)
                if stop == "rank 1":
                    os.kill(int((mark / "pid-1").read_text()), signal.SIGINT)
                else:
                    os.killpg(proc.pid, signal.SIGINT if stop == "Ctrl-C" else signal.SIGTERM)
            out, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode, out.splitlines()

    return run


def _wait_for_step(mark: Path, at: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if int((mark / "step").read_text()) >= at:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the job never reached step {at}")


def _ours(lines: list[str]) -> list[str]:
    """Our workers' lines, without torchrun's own report (its warnings and traceback)."""
    return [line for line in lines if line.startswith(("interrupted", "error:", "done:"))]


def test_signals_stop_every_rank_and_the_same_command_resumes_bitwise(job, tmp_path):
    code, out = job("straight")
    assert code == 0 and _ours(out)[-1].startswith("done:"), out
    decoded = sorted(p.name for p in (tmp_path / "mark-straight").glob("decoded-*"))
    assert decoded == ["decoded-0"]  # once on this machine, shared with rank 1
    runs = tmp_path / "runs"
    steps = []
    # Ctrl-C to the whole job in epoch 1, SIGTERM (a scheduler's notice) in epoch 2, and
    # SIGINT to rank 1 alone in epoch 3; each time the same command goes on
    for stop, at in (("Ctrl-C", 2), ("SIGTERM", 10), ("rank 1", 18)):
        code, out = job("cut", stop, at)
        lines = _ours(out)
        assert code != 0 and len(lines) == 1, out  # said once, by rank 0, with no error:
        assert lines[0].startswith("interrupted at epoch") and "state saved" in lines[0], out
        steps.append(int(lines[0].split("step ")[1].split(";")[0]))
        assert steps[-1] >= at
    code, out = job("cut")
    assert code == 0 and _ours(out)[-1].startswith("done:"), out
    log = (runs / "cut/train.log").read_text()
    for step in steps:  # each resume began where its stop saved
        assert f"step {step}\n" in log and log.count(f"step {step}\n") == 1
    a = load_file(str(runs / "straight/checkpoints/last.safetensors"))
    b = load_file(str(runs / "cut/checkpoints/last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_refusal_on_one_rank_ends_every_rank_with_its_line(job):
    started = time.monotonic()
    code, out = job("refused", RGFLOW_TEST_REFUSE_RANK="1")
    assert code != 0 and _ours(out) == ["error: rank 1 has no memory left"], out
    assert time.monotonic() - started < 120  # nobody waited for a collective's timeout


def test_cuda_n_is_refused_with_several_processes_per_machine(monkeypatch):
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="uses the GPU of its local rank"):
        distributed.init("cuda:1")


def test_the_process_group_has_a_timeout(monkeypatch):
    joined = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **kw: joined.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.init("cpu") == torch.device("cpu")
    assert joined["timeout"] == distributed.TIMEOUT and distributed.TIMEOUT.total_seconds() >= 1800
