"""The command line only wires: each main command hands its flags to one core call.

The core call is patched, so these tests check which arguments reach it, not the maths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image
from typer.testing import CliRunner

from rgflow_cli.main import app
from rgflow_core import build_model, save_model

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("wiring")
    save_model(perturb(build_model(tiny_config(channels=3))), root / "m.safetensors")
    gen = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{name}.png")
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(root / "mask.png")
    return root


class Spy:
    """Stands in for a core function: records its arguments, returns `result(...)`."""

    def __init__(self, result):
        self.result = result
        self.args = self.kwargs = None

    def __call__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        return self.result(*args, **kwargs)


def _ok(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_sample_passes_count_temperatures_batch_and_seed(files, tmp_path, monkeypatch):
    spy = Spy(lambda model, n, *rest: torch.zeros(n, 3, 8, 8, dtype=torch.uint8))
    monkeypatch.setattr("rgflow_core.codec.sample_images", spy)
    out = tmp_path / "s.png"
    _ok("sample", "-c", files / "m.safetensors", "-n", 5, "--batch-size", 2, "--seed", 7,
        "-t", 0.5, "--level-temperature", "1=0.25", "-o", out)  # fmt: skip
    model, n, temperature, generator, batch_size, _ = spy.args
    assert (n, batch_size) == (5, 2)
    levels = model.level_map
    assert bool((temperature[levels == 0] == 0.5).all())
    assert bool((temperature[levels >= 1] == 0.25).all())
    assert generator.initial_seed() == 7
    assert out.is_file()


def test_mix_passes_both_images_and_the_cut(files, tmp_path, monkeypatch):
    spy = Spy(lambda model, a, b, scales: torch.zeros(len(scales), 4, *a.shape, dtype=torch.uint8))
    monkeypatch.setattr("rgflow_core.mixing.mix_panel", spy)
    _ok("mix", "-c", files / "m.safetensors", files / "a.png", files / "b.png", "--scale", 2,
        "-o", tmp_path / "m.png")  # fmt: skip
    _, a, b, scales = spy.args
    assert scales == [2]
    for given, name in ((a, "a.png"), (b, "b.png")):
        assert np.array_equal(given.permute(1, 2, 0).numpy(), np.asarray(Image.open(files / name)))


def test_encode_passes_the_images_and_batch_size(files, tmp_path, monkeypatch):
    def fake(model, images, batch_size, progress):
        return torch.zeros(len(images), 3, 8, 8), torch.full((len(images),), 3.0)

    spy = Spy(fake)
    monkeypatch.setattr("rgflow_core.codec.encode_images", spy)
    out = _ok("encode", "-c", files / "m.safetensors", files / "a.png", files / "b.png",
              "--batch-size", 1, "-o", tmp_path / "z.safetensors", "--json")  # fmt: skip
    _, images, batch_size, _ = spy.args
    assert images.shape == (2, 3, 8, 8) and batch_size == 1
    assert [r["bpd"] for r in json.loads(out)["images"]] == [3.0, 3.0]


def test_inpaint_passes_the_optimiser_settings(files, tmp_path, monkeypatch):
    from rgflow_core.inpaint import inpaint as real_inpaint

    spy = Spy(real_inpaint)
    monkeypatch.setattr("rgflow_core.inpaint.inpaint", spy)
    _ok("inpaint", "-c", files / "m.safetensors", files / "a.png", files / "mask.png", "--steps",
        3, "--lr", 0.01, "--restarts", 2, "--noise", 0.5, "-o", tmp_path / "f.png")  # fmt: skip
    _, image, mask = spy.args
    assert image.shape == (3, 8, 8) and bool(mask.all())
    kw = spy.kwargs
    assert (kw["steps"], kw["lr"], kw["restarts"], kw["noise"]) == (3, 0.01, 2, 0.5)


def test_receptive_field_passes_samples_temperature_and_positions(files, tmp_path, monkeypatch):
    spy = Spy(lambda model, positions, *rest: torch.rand(len(positions), 8, 8))
    monkeypatch.setattr("rgflow_core.receptive.receptive_field", spy)
    _ok("receptive-field", "-c", files / "m.safetensors", "--samples", 3, "-t", 0.7,
        "--levels", "0,2", "--per-level", 2, "-o", tmp_path / "rf.png")  # fmt: skip
    model, positions, samples, temperature, *_ = spy.args
    assert (samples, temperature) == (3, 0.7)
    assert [int(model.level_map[i, j]) for i, j in positions.tolist()] == [0, 0, 2, 2]


def test_train_passes_the_resolved_preset_and_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_train(preset, data, run, device, hooks, *, allow_changes, allow_large):
        seen.update(preset=preset, run=run.root, device=device, allow_changes=allow_changes)
        return {}

    def fake_data(data_cfg, model_cfg, progress=None, **kw):
        seen["data_root"] = data_cfg.data_root
        return None

    monkeypatch.setattr("rgflow_core.train.train", fake_train)
    monkeypatch.setattr("rgflow_core.data.load_dataset", fake_data)
    _ok("train", "--preset", "quick", "--epochs", 3, "--lr", 0.005, "--seed", 4, "--batch-size",
        16, "--set", "n_hidden=32", "--name", "mine", "--data-root", "d", "--allow-changes",
        "--device", "cpu", "-q")  # fmt: skip
    p = seen["preset"]
    assert (p.train.epochs, p.train.lr, p.train.seed, p.train.batch_size) == (3, 0.005, 4, 16)
    assert p.model.n_hidden == 32 and seen["data_root"] == "d"
    assert seen["run"].as_posix() == "runs/mine" and seen["allow_changes"] is True
    assert str(seen["device"]) == "cpu"


@pytest.mark.parametrize("flags", [True, False])
def test_train_passes_amp_compile_checkpointing_and_tensorboard(tmp_path, monkeypatch, flags):
    pytest.importorskip("tensorboard")
    from rgflow_cli.train import TensorBoard
    from rgflow_core.train import _model_and_optimizer

    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_train(preset, data, run, device, hooks, *, allow_changes, allow_large):
        seen.update(preset=preset, tensorboard=hooks.tensorboard)
        record = {"epoch": 1, "step": 2, "images": 64, "train_bpd": 5.0, "test_bpd": 4.5}
        hooks.epoch_end(record, torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
        return {}

    monkeypatch.setattr("rgflow_core.train.train", fake_train)
    monkeypatch.setattr("rgflow_core.data.load_dataset", lambda *a, **kw: None)
    # the quick preset compiles by default: --no-compile turns it off
    extra = ["--amp", "bf16", "--compile", "--checkpointing", "--tensorboard"] if flags else []
    extra = extra or ["--no-compile"]
    _ok("train", "--preset", "quick", "--set", "n_hidden=8", "--device", "cpu", "-q", *extra)
    cfg = seen["preset"].train
    assert (cfg.amp, cfg.compile, cfg.checkpointing) == (
        ("bf16", True, True) if flags else ("off", False, False)
    )
    # the run builds what they ask for: compiled training passes, activation checkpointing
    flow, _ = _model_and_optimizer(seen["preset"], torch.device("cpu"))
    assert (flow.kernel, flow.checkpointing) == (("compiled", True) if flags else ("fast", False))
    events = list((tmp_path / "runs/quick/tb").glob("events.out.tfevents.*"))
    if flags:
        assert isinstance(seen["tensorboard"], TensorBoard) and len(events) == 1
        assert events[0].stat().st_size > 100  # the scalars and the sample grid were logged
    else:
        assert seen["tensorboard"] is None and not events


def test_make_msds_passes_sizes_seed_and_workers(tmp_path, monkeypatch):
    spy = Spy(lambda *args, **kwargs: tmp_path / "msds2")
    monkeypatch.setattr("rgflow_core.msds.write_msds", spy)
    _ok("make-msds", "msds2", "--out", tmp_path, "--train", 30, "--test", 10, "--seed", 5,
        "--workers", 1)  # fmt: skip
    assert spy.args[1:4] == ("msds2", 30, 10)
    assert spy.kwargs["seed"] == 5 and spy.kwargs["workers"] == 1


def test_eval_passes_batch_size_and_amp(tmp_path, monkeypatch, files):
    from rgflow_core.data import ImageData

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    monkeypatch.setattr(
        "rgflow_core.data.load_dataset", lambda *a, **k: ImageData("x", images, images, tmp_path)
    )
    spy = Spy(lambda model, imgs, batch_size, amp, progress: 1.5)
    monkeypatch.setattr("rgflow_core.loop.evaluate", spy)
    out = _ok("eval", "-c", files / "m.safetensors", "--dataset", "folder", "--batch-size", 2,
              "--amp", "bf16", "--json")  # fmt: skip
    _, imgs, batch_size = spy.args
    assert batch_size == 2 and spy.kwargs["amp"] is True and len(imgs) == 4
    assert json.loads(out)["bpd"] == 1.5


def test_the_entry_point_answers_help_version_and_typos(run_main):
    code, out = run_main()
    assert code == 0 and out.startswith("Usage: rgflow [OPTIONS] COMMAND") and "explore" in out
    code, out = run_main("--version")
    assert code == 0 and out.startswith("rgflow ")
    code, out = run_main("sample", "--help")
    assert code == 0 and out.startswith("Usage: rgflow sample [OPTIONS]")
    code, out = run_main("smaple")
    assert code == 2 and "No such command 'smaple'. Did you mean 'sample'?" in out


def test_quick_compiles_by_default_and_falls_back_without_a_compiler(tmp_path, monkeypatch):
    # the quick preset trains with the compiled pass; where torch.compile cannot run (no
    # C++ compiler), training says so in its log and runs the fast kernels
    from rgflow_core.config import load_preset

    assert load_preset("quick").train.compile is True
    seen = {}
    monkeypatch.setattr(
        "rgflow_core.train.compile_unavailable", lambda device: "no C++ compiler found (g++)"
    )
    monkeypatch.setattr(
        "rgflow_core.train.Trainer.train_epoch",
        lambda self, *a, **kw: seen.setdefault("kernel", self.flow.kernel),
    )
    # the trainer raises nothing, so the run ends after its epochs; the log tells the fallback
    from rgflow_core.data import ImageData
    from rgflow_core.run import RunFolder
    from rgflow_core.train import train

    preset = load_preset("quick", {"epochs": 1, "n_hidden": 8, "n_layers": [1, 1, 1, 1]})
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    data = ImageData(name="zeros", train=images, test=images[:4], source=tmp_path)
    with RunFolder(tmp_path / "run").open() as run:
        train(preset, data, run, "cpu")
    assert seen["kernel"] == "fast"
    assert (
        "training without torch.compile: no C++ compiler found"
        in (tmp_path / "run" / "train.log").read_text()
    )
