"""A run folder survives kills at every write, has one owner, refuses silent changes of
course, and trusts no state file it cannot check."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from test_train import fit, same_weights, tiny_data, tiny_preset

from rgflow_core.errors import CheckpointError, RunLockedError, UsageError
from rgflow_core.run import RunFolder


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing may catch it on the way out."""


def count_replaces(monkeypatch) -> dict:
    """Count (and optionally fail) the renames that finish every atomic write."""
    real = os.replace
    state = {"calls": 0, "fail_at": None, "paths": []}

    def replace(src, dst, *args, **kwargs):
        state["calls"] += 1
        state["paths"].append(os.path.basename(dst))
        if state["calls"] == state["fail_at"]:
            raise SimulatedKill(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return state


def complete(run, epochs: int) -> None:
    """Every file the finished run should hold, and no temp file."""
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert names == {"state.pt", "last.safetensors"} | {
        f"epoch-{e:04d}.safetensors" for e in range(1, epochs + 1)
    }
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    for e in range(1, epochs + 1):
        assert (run / f"samples/epoch-{e:04d}.png").is_file()
        assert f"epoch {e}/{epochs}  step" in (run / "train.log").read_text()
    assert (run / "curves.png").is_file() and (run / "config.yaml").is_file()
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_a_kill_at_every_write_of_a_run_is_repaired_by_the_next_start(tmp_path, monkeypatch):
    preset, data = tiny_preset(keep_checkpoints=0), tiny_data()
    counter = count_replaces(monkeypatch)
    fit(preset, data, tmp_path / "straight")
    writes = counter["paths"]
    assert writes.count("state.pt") == 2 and writes.count("last.safetensors") == 2
    complete(tmp_path / "straight", 2)
    for k in range(1, len(writes) + 1):
        run = tmp_path / f"killed-{k}"
        counter.update(calls=0, fail_at=k)
        with pytest.raises(SimulatedKill):
            fit(preset, data, run)
        counter.update(fail_at=None)
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / ".state.pt.x1y2.tmp").write_bytes(b"half a file")
        fit(preset, data, run)  # the same command again
        complete(run, 2)
        assert same_weights(
            tmp_path / "straight/checkpoints/last.safetensors", run / "checkpoints/last.safetensors"
        ), f"kill at write {k} ({writes[k - 1]})"


def test_a_leftover_temp_file_is_not_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".state.pt.abcd.tmp").write_bytes(b"x" * 100)
    fit(tiny_preset(epochs=1), tiny_data(), run)
    complete(run, 1)


def test_a_finished_run_rebuilds_what_is_missing(tmp_path):
    run = tmp_path / "run"
    fit(tiny_preset(), tiny_data(), run)
    last = (run / "checkpoints/last.safetensors").read_bytes()
    for name in ("checkpoints/last.safetensors", "samples/epoch-0002.png", "curves.png"):
        (run / name).unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    fit(tiny_preset(), tiny_data(), run)
    complete(run, 2)
    assert same_weights(
        run / "checkpoints/epoch-0002.safetensors", run / "checkpoints/last.safetensors"
    )
    assert len((run / "checkpoints/last.safetensors").read_bytes()) == len(last)


def test_two_trainers_cannot_share_a_run_folder(tmp_path):
    holder, rival = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    with holder.open(), pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
        rival.open().__enter__()
    with RunFolder(tmp_path / "run").open():  # released: free again
        pass


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path):
    with pytest.raises(UsageError), RunFolder(tmp_path / "runs" / "new").open():
        raise UsageError("the data could not be loaded")
    assert not (tmp_path / "runs").exists()


def test_resuming_with_other_settings_is_refused_then_recorded(tmp_path):
    run, data = tmp_path / "run", tiny_data()
    fit(tiny_preset(epochs=1), data, run)
    with pytest.raises(UsageError, match=r"lr 0\.01 -> 0\.02, seed 0 -> 3.*allow_changes"):
        fit(tiny_preset(epochs=2, lr=0.02, seed=3), data, run)
    fit(tiny_preset(epochs=2, lr=0.02, seed=3), data, run, allow_changes=True)
    config = (run / "config.yaml").read_text()
    assert "# at epoch 1, step 4: epochs 1 -> 2, lr 0.01 -> 0.02, seed 0 -> 3" in config
    assert "lr: 0.02" in config
    state = torch.load(run / "checkpoints/state.pt", weights_only=True)
    assert state["changes"][0]["changes"]["lr"] == [0.01, 0.02] or state["changes"][0]["changes"][
        "lr"
    ] == (0.01, 0.02)
    # settings that do not change the run's course need no permission
    fit(tiny_preset(epochs=2, lr=0.02, seed=3, keep_checkpoints=1), data, run)


def _state(run):
    return torch.load(run / "checkpoints/state.pt", weights_only=True)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda s: [1, 2, 3], "holds no mapping"),
        (lambda s: {**s, "progress": {**s["progress"], "batch": -4}}, "counter batch is -4"),
        (lambda s: {k: v for k, v in s.items() if k != "optimizer"}, "no 'optimizer'"),
        (
            lambda s: {**s, "model": {**s["model"], next(iter(s["model"])): torch.zeros(3)}},
            "wrong shape",
        ),
    ],
)
def test_a_state_that_does_not_fit_is_refused(tmp_path, spoil, message):
    run = tmp_path / "run"
    fit(tiny_preset(epochs=1), tiny_data(), run)
    torch.save(spoil(_state(run)), run / "checkpoints/state.pt")
    with pytest.raises(CheckpointError, match=message):
        fit(tiny_preset(), tiny_data(), run)


def test_an_optimizer_state_of_the_wrong_shape_is_refused_before_it_is_used(tmp_path):
    # loaded as it is, such a state crashes the fused AdamW step with a segmentation fault
    run = tmp_path / "run"
    fit(tiny_preset(epochs=1), tiny_data(), run)
    state = _state(run)
    entry = state["optimizer"]["state"][0]
    entry["exp_avg"] = torch.zeros(entry["exp_avg"].numel() + 5)
    torch.save(state, run / "checkpoints/state.pt")
    with pytest.raises(CheckpointError, match="optimizer entry exp_avg of parameter 0"):
        fit(tiny_preset(), tiny_data(), run)


# --- the cosine schedule on resume ----------------------------------------------------------


def cosine_preset(**kw):
    """The quick preset (cosine schedule) on a few random 32x32 images: 2 steps an epoch
    (at batch 32, with the eager kernels: what is tested is the schedule)."""
    from rgflow_core.config import load_preset

    sizes = {"train_size": 64, "test_size": 16, "batch_size": 32, "lr": 0.02, "compile": False}
    return load_preset("quick", {"epochs": 1, **sizes, **kw})


def cosine_data():
    from rgflow_core.data import ImageData

    images = torch.randint(0, 256, (80, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    return ImageData("msds1", images[:64], images[64:], source=None)


def test_raising_the_epochs_of_a_cosine_run_is_refused_then_replanned(tmp_path):
    from rgflow_core.loop import learning_rate

    run, data = tmp_path / "run", cosine_data()
    first = fit(cosine_preset(epochs=1), data, run)
    assert first["lr"] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi / 2)))
    # the schedule was planned for 1 epoch: going on is a change of course
    with pytest.raises(UsageError, match=r"epochs 1 -> 3.*allow_changes"):
        fit(cosine_preset(epochs=3), data, run)
    assert json.loads((run / "metrics.jsonl").read_text())["epoch"] == 1
    # explicitly: the rest of the run follows the schedule of a 3-epoch run, recorded
    record = fit(cosine_preset(epochs=3), data, run, allow_changes=True)
    assert record["epoch"] == 3
    epoch2 = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    assert epoch2["lr"] == pytest.approx(learning_rate(cosine_preset().train, 3, 6))
    assert "# at epoch 1, step 2: epochs 1 -> 3" in (run / "config.yaml").read_text()
    # shortening it is refused as well
    with pytest.raises(UsageError, match=r"epochs 3 -> 2"):
        fit(cosine_preset(epochs=2), data, run)


def test_a_cosine_run_resumed_mid_epoch_matches_an_uninterrupted_one(tmp_path):
    from test_train import StopAfter

    from rgflow_core.errors import Interrupted

    data = cosine_data()
    fit(cosine_preset(epochs=2), data, tmp_path / "straight")
    with pytest.raises(Interrupted):
        fit(cosine_preset(epochs=2), data, tmp_path / "cut", hooks=StopAfter(3))
    fit(cosine_preset(epochs=2), data, tmp_path / "cut")
    assert same_weights(
        tmp_path / "straight/checkpoints/last.safetensors",
        tmp_path / "cut/checkpoints/last.safetensors",
    )


def test_raising_the_epochs_of_a_constant_schedule_needs_no_permission(tmp_path):
    run, data = tmp_path / "run", tiny_data()
    fit(tiny_preset(epochs=1), data, run)
    assert fit(tiny_preset(epochs=2), data, run)["epoch"] == 2


# --- pruning ---------------------------------------------------------------------------------


def test_pruning_keeps_the_newest_epochs_by_number(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.checkpoints.mkdir(parents=True)
    for epoch in (998, 9999, 10000, 10001):
        folder.epoch_checkpoint(epoch).write_bytes(b"")
    folder.prune(2)
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == [
        "epoch-10000.safetensors",
        "epoch-10001.safetensors",
    ]


def test_a_state_from_before_the_count_in_a_row_was_kept_still_resumes(tmp_path):
    run = tmp_path / "run"
    fit(tiny_preset(epochs=1), tiny_data(), run)
    state = _state(run)
    del state["progress"]["nonfinite_in_a_row"]
    torch.save(state, run / "checkpoints/state.pt")
    assert fit(tiny_preset(epochs=2), tiny_data(), run)["epoch"] == 2
    assert _state(run)["progress"]["nonfinite_in_a_row"] == 0
