"""Training: the loop over any batches, exact resume, the NaN guard, DDP equivalence,
the run folder and the command line."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from rgflow_core import ModelConfig, build_model, image_bpd, load_model
from rgflow_core.config import TrainConfig, preset_from_dict
from rgflow_core.data import ImageData, load_dataset, train_batches
from rgflow_core.device import compile_unavailable
from rgflow_core.errors import DataError, Interrupted, TrainingError, UsageError
from rgflow_core.loop import Hooks, Trainer, evaluate, learning_rate, step_noise
from rgflow_core.preprocess import dequantize
from rgflow_core.run import RunFolder
from rgflow_core.train import train

TINY = dict(
    dataset="folder",
    image_size=8,
    channels=1,
    kernel_size=2,
    n_layers=[1, 1, 1],
    n_res=1,
    n_mlp=1,
    n_hidden=8,
    batch_size=8,
    epochs=2,
    lr=1e-2,
)


def tiny_preset(**kw):
    return preset_from_dict({**TINY, **kw}, name="tiny")


def tiny_data(n_train: int = 32, n_test: int = 16) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(60, 200, (n_train + n_test, 1, 1, 1), generator=gen)
    noise = torch.randint(-20, 20, (n_train + n_test, 1, 8, 8), generator=gen)
    images = (base + noise).to(torch.uint8)
    return ImageData("tiny", images[:n_train], images[n_train:], source=None)


def fit(preset, data, root, hooks=None, resume=None, **kwargs) -> dict:
    """What `rgflow train` does: own the run folder, then train in it."""
    with RunFolder(root).open(resume) as run:
        return train(preset, data, run, "cpu", hooks, **kwargs)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same_weights(a, b) -> bool:
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the loop -----------------------------------------------------------------------------


def test_the_loop_takes_any_iterable_of_batches():
    cfg = TrainConfig(batch_size=4, lr=1e-2, epochs=1)
    flow = build_model(ModelConfig(**{k: TINY[k] for k in ("image_size", "channels")},
                                   kernel_size=2, n_layers=(1, 1, 1), n_res=1, n_mlp=1,
                                   n_hidden=8))  # fmt: skip
    optimizer = torch.optim.AdamW(flow.parameters(), lr=cfg.lr)
    trainer = Trainer(flow, optimizer, cfg, steps_per_epoch=3)
    batches = [torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8) for _ in range(3)]
    before = [p.detach().clone() for p in flow.parameters()]
    trainer.train_epoch(batches, epoch=1)
    p = trainer.progress
    assert (p.step, p.batch, p.epoch_images) == (3, 3, 12)
    assert any(not torch.equal(a, b) for a, b in zip(before, flow.parameters()))
    record = trainer.end_epoch(1, test_bpd=None, seconds=1.0)
    assert record["images"] == 12 and p.batch == 0 and p.epoch == 1


def test_a_step_takes_batches_of_any_size():
    # the noise is sized by the batch given: a batch of 1 is one image, not broadcast to
    # cfg.batch_size images, and a batch of 3 is not an error
    cfg = TrainConfig(batch_size=4, lr=1e-2, epochs=1)
    flow = build_model(tiny_preset().model)
    trainer = Trainer(flow, torch.optim.AdamW(flow.parameters(), lr=cfg.lr), cfg, 2)
    one, three = (torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8) for n in (1, 3))
    with torch.no_grad():
        x = dequantize(one, noise=step_noise((1, 1, 8, 8), cfg.seed, 1, 0))
        expected = image_bpd(flow, x).item()
    assert trainer.step(one, epoch=1)
    assert trainer.progress.epoch_images == 1
    assert trainer.train_bpd() == pytest.approx(expected, abs=1e-6)
    assert trainer.step(three, epoch=1)
    assert (trainer.progress.step, trainer.progress.epoch_images) == (2, 4)


def test_evaluation_does_not_depend_on_the_batch_size():
    flow = build_model(tiny_preset().model)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if "gain" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    images = tiny_data(n_train=0, n_test=23).test
    # equal up to the float32 rounding of the flow, which differs between batch sizes
    # (measured: 4e-8 bpd; keyed by batch, as before, the noise made it 4e-4)
    figures = {b: evaluate(flow, images, batch_size=b) for b in (1, 5, 23, 256)}
    for b, bpd in figures.items():
        assert bpd == pytest.approx(figures[256], rel=0, abs=1e-6), b
    # the figure of the first images is the same in a longer set: noise is keyed by image
    assert evaluate(flow, images[:5], batch_size=2) == pytest.approx(
        evaluate(flow, images, batch_size=5, max_batches=1), rel=0, abs=1e-6
    )


def test_learning_rate_is_a_function_of_the_step():
    cosine = TrainConfig(lr=0.1, lr_schedule="cosine")
    assert learning_rate(cosine, 0, 100) == pytest.approx(0.1)
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.05)
    assert learning_rate(cosine, 100, 100) == pytest.approx(0.0)
    assert learning_rate(TrainConfig(lr=0.1), 70, 100) == 0.1


def test_bf16_autocast_keeps_bpd_close():
    # Random gains make every coupling layer act; with the nets' output Linear in bf16 the
    # error was 0.013 bpd here, with it in float32 (as now) 0.001.
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, channels=3, kernel_size=4, n_layers=[2, 2, 2], n_res=1, n_hidden=32
    )
    flow = build_model(cfg)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if "gain" in name:
                p.normal_(0, 0.5)
        x = torch.rand(64, 3, 16, 16)
        exact = image_bpd(flow, x, amp=False).mean()
        bf16 = image_bpd(flow, x, amp=True).mean()
    assert abs(float(bf16 - exact)) < 0.005


def test_batches_cover_the_epoch_and_shard_by_rank():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    full = list(train_batches(images, 4, seed=1, epoch=1))
    assert len(full) == 5 and len(torch.cat(full).unique()) == 20
    shards = [list(train_batches(images, 4, seed=1, epoch=1, rank=r, world=2)) for r in (0, 1)]
    for b, batch in enumerate(full):
        assert torch.equal(
            torch.cat([shards[0][b], shards[1][b]]).sort(0).values, batch.sort(0).values
        )
    resumed = list(train_batches(images, 4, seed=1, epoch=1, start=3))
    assert all(torch.equal(x, y) for x, y in zip(resumed, full[3:]))


# --- runs: resume, interruption, the NaN guard ----------------------------------------------


def test_resume_is_bitwise_identical(tmp_path):
    preset, data = tiny_preset(), tiny_data()
    fit(preset, data, tmp_path / "straight")
    fit(tiny_preset(epochs=1), data, tmp_path / "split")
    fit(preset, data, tmp_path / "split", resume=True)
    assert same_weights(
        tmp_path / "straight/checkpoints/last.safetensors",
        tmp_path / "split/checkpoints/last.safetensors",
    )
    lines = (tmp_path / "split/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


class StopAfter(Hooks):
    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.seen = 0

    def step(self, done, bpd, images_per_s) -> None:
        self.seen += 1

    def stop_requested(self) -> bool:
        return self.seen >= self.steps


def test_interrupt_mid_epoch_then_resume_matches(tmp_path):
    preset, data = tiny_preset(), tiny_data()
    fit(preset, data, tmp_path / "straight")
    with pytest.raises(Interrupted, match="Start it again"):
        fit(preset, data, tmp_path / "cut", hooks=StopAfter(3))
    assert not (tmp_path / "cut/checkpoints/last.safetensors").exists()
    fit(preset, data, tmp_path / "cut")  # no flag: continues by itself
    assert same_weights(
        tmp_path / "straight/checkpoints/last.safetensors",
        tmp_path / "cut/checkpoints/last.safetensors",
    )


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="no C++ compiler")
def test_compiled_training_resumes_bitwise_and_ignores_the_thread_count(tmp_path):
    # The compiled training pass (the quick preset's): an interrupted run resumes to the
    # uninterrupted weights, and one thread gives the weights two threads give.
    preset, data = tiny_preset(compile=True), tiny_data()
    fit(preset, data, tmp_path / "straight")
    with pytest.raises(Interrupted):
        fit(preset, data, tmp_path / "cut", hooks=StopAfter(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        fit(preset, data, tmp_path / "cut")
    finally:
        torch.set_num_threads(threads)
    assert same_weights(
        tmp_path / "straight/checkpoints/last.safetensors",
        tmp_path / "cut/checkpoints/last.safetensors",
    )
    fit(tiny_preset(), data, tmp_path / "fast")  # the fast kernels round differently
    assert not same_weights(
        tmp_path / "straight/checkpoints/last.safetensors",
        tmp_path / "fast/checkpoints/last.safetensors",
    )


def test_run_folder_contents(tmp_path):
    record = fit(tiny_preset(keep_checkpoints=1), tiny_data(), tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0002.safetensors",
        "last.safetensors",
        "state.pt",
    ]
    assert (run / "samples/epoch-0001.png").is_file() and (run / "samples/epoch-0002.png").is_file()
    with Image.open(run / "samples/epoch-0002.png") as grid:
        assert grid.size == (8 * 8 + 9 * 2, 8 * 8 + 9 * 2)
    with Image.open(run / "curves.png") as curves:
        assert curves.size[0] > 300 and curves.size[1] > 200
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "step", "images", "train_bpd", "test_bpd", "images_per_s", "seconds"):
        assert key in metrics[-1]
    assert metrics[-1]["images"] == 2 * 4 * 8
    assert metrics[-1]["test_bpd"] == pytest.approx(record["test_bpd"])
    model = load_model(run / "checkpoints/last.safetensors")
    assert evaluate(model, tiny_data().test) == pytest.approx(record["test_bpd"], abs=1e-5)
    assert "epochs: 2" in (run / "config.yaml").read_text()
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log
    # learning happened: the second epoch beats the untrained model
    fresh = build_model(tiny_preset().model)
    assert record["test_bpd"] < evaluate(fresh, tiny_data().test)


def test_resume_without_state_and_finished_run(tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        fit(tiny_preset(), tiny_data(), tmp_path / "none", resume=True)
    fit(tiny_preset(epochs=1), tiny_data(), tmp_path / "done")
    before = (tmp_path / "done/checkpoints/last.safetensors").read_bytes()
    fit(tiny_preset(epochs=1), tiny_data(), tmp_path / "done")
    assert (tmp_path / "done/checkpoints/last.safetensors").read_bytes() == before
    with pytest.raises(UsageError, match="another architecture"):
        fit(tiny_preset(n_hidden=16), tiny_data(), tmp_path / "done")


def poison(monkeypatch, bad_call) -> None:
    """Make the model's log-determinant NaN on the forward calls where bad_call(n) holds."""
    calls = {"n": 0}

    def poisoned_model(cfg):
        model = build_model(cfg)
        original = model.forward

        def forward(y):
            calls["n"] += 1
            z, ladj = original(y)
            return z, ladj * float("nan") if bad_call(calls["n"]) else ladj

        model.forward = forward
        return model

    monkeypatch.setattr("rgflow_core.train.build_model", poisoned_model)


def test_nonfinite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    fit(tiny_preset(max_nonfinite=2, epochs=3), tiny_data(), tmp_path / "nan")
    good = weights(tmp_path / "nan/checkpoints/last.safetensors")
    # one bad step, a good one, then bad ones (4 steps per epoch)
    poison(monkeypatch, lambda n: n == 1 or n >= 3)
    with pytest.raises(TrainingError, match="non-finite losses in a row.*last good checkpoint"):
        fit(tiny_preset(max_nonfinite=2, epochs=4), tiny_data(), tmp_path / "nan")
    after = weights(tmp_path / "nan/checkpoints/last.safetensors")
    assert all(torch.equal(good[k], after[k]) for k in good)


class _NaNGradient(torch.autograd.Function):
    """The identity whose gradient is NaN: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_non_finite_gradient_is_skipped_without_clipping(tmp_path, monkeypatch):
    # grad_clip 0 computes no clipping norm; the guard must still see the gradient
    calls = {"n": 0}

    def nan_gradient_model(cfg):
        model = build_model(cfg)
        original = model.forward

        def forward(y):
            z, ladj = original(y)
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == 2:
                    ladj = _NaNGradient.apply(ladj)
            return z, ladj

        model.forward = forward
        return model

    monkeypatch.setattr("rgflow_core.train.build_model", nan_gradient_model)
    record = fit(tiny_preset(grad_clip=0.0, epochs=1), tiny_data(), tmp_path / "run")
    assert record["nonfinite_steps"] == 1 and record["step"] == 3
    last = weights(tmp_path / "run/checkpoints/last.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in last.values())


def test_non_finite_steps_in_a_row_are_counted_across_a_restart(tmp_path, monkeypatch):
    preset, data, run = tiny_preset(max_nonfinite=3), tiny_data(), tmp_path / "run"
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        poison(patch, lambda n: n in (2, 3))  # steps 2 and 3 of epoch 1 ...
        fit(preset, data, run, hooks=StopAfter(3))  # ... then Ctrl-C
    poison(monkeypatch, lambda n: n == 1)  # the first step after the restart: 3 in a row
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        fit(preset, data, run)


def test_first_epoch_stopped_by_the_guard_names_no_checkpoint(tmp_path, monkeypatch):
    poison(monkeypatch, lambda n: True)
    with pytest.raises(TrainingError, match="no checkpoint has been saved yet"):
        fit(tiny_preset(max_nonfinite=3), tiny_data(), tmp_path / "nan")


def test_a_test_bpd_that_is_not_finite_fails_the_epoch(tmp_path, monkeypatch):
    # the training steps are fine, the evaluation (no grad) gives NaN
    poison(monkeypatch, lambda n: not torch.is_grad_enabled())
    with pytest.raises(TrainingError, match="test bpd that is not finite"):
        fit(tiny_preset(), tiny_data(), tmp_path / "nan")
    assert not (tmp_path / "nan/checkpoints/last.safetensors").exists()
    assert not (tmp_path / "nan/checkpoints/epoch-0001.safetensors").exists()


# --- several processes -----------------------------------------------------------------------


def _ddp_worker(rank: int, port: int, root: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        with RunFolder(root).open(lock=rank == 0) as run:
            train(tiny_preset(epochs=1), tiny_data(), run, "cpu")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_one(tmp_path):
    torch.manual_seed(0)
    single = fit(tiny_preset(epochs=1), tiny_data(), tmp_path / "single")
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path / "ddp"), {}), nprocs=2, join=True)
    a = weights(tmp_path / "single/checkpoints/last.safetensors")
    b = weights(tmp_path / "ddp/checkpoints/last.safetensors")
    # Not bitwise: each process takes the gradient of its half of the batch and DDP averages
    # them, which rounds differently from one backward pass over the whole batch. Measured
    # after one epoch (4 steps): at most 1.2e-7 in any weight, 6e-8 in the train bpd; the
    # weights themselves moved by more than 1e-3.
    torch.manual_seed(tiny_preset().train.seed)  # the initial weights, as train() makes them
    init = build_model(tiny_preset().model).state_dict()
    for k in a:
        assert float((a[k] - b[k]).abs().max()) < 1e-6, k
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
    ddp = json.loads((tmp_path / "ddp/metrics.jsonl").read_text().splitlines()[-1])
    assert ddp["train_bpd"] == pytest.approx(single["train_bpd"], rel=0, abs=1e-6)
    assert ddp["test_bpd"] == pytest.approx(single["test_bpd"], rel=0, abs=1e-6)


# --- data loading and the command line --------------------------------------------------


def _write_folder(root, n: int = 12, size: int = 8) -> None:
    for split, count in (("train", n), ("test", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (size, size), 10 * i).save(root / split / f"{i}.png")


def test_folder_dataset_and_wrong_size_names_the_file(tmp_path):
    _write_folder(tmp_path / "imgs")
    preset = tiny_preset(data_root=str(tmp_path / "imgs"))
    data = load_dataset(preset.data, preset.model)
    assert data.train.shape == (12, 1, 8, 8) and data.test.shape == (4, 1, 8, 8)
    Image.new("L", (9, 8)).save(tmp_path / "imgs/train/bad.png")
    with pytest.raises(DataError, match=r"bad\.png is 9x8 but the model takes 8x8"):
        load_dataset(preset.data, preset.model)


def test_cli_train_then_eval(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "imgs", n=16)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(json.dumps({**TINY, "epochs": 1}))
    args = ["train", "--preset", str(preset), "--data-root", "imgs", "--device", "cpu", "-q"]
    code, out = run_main(*args)
    assert code == 0, out
    assert "done: test bpd" in out and "runs/tiny/checkpoints/last.safetensors" in out
    code, out = run_main("eval", "--json", "--device", "cpu")
    assert code == 0, out
    printed = next(line for line in out.splitlines() if line.startswith("{"))
    assert json.loads(printed)["bpd"] == pytest.approx(
        json.loads((tmp_path / "runs/tiny/metrics.jsonl").read_text())["test_bpd"], abs=1e-5
    )
    # another batch size gives the training log's figure too (the noise is keyed by image)
    code, out = run_main("eval", "--json", "--device", "cpu", "--batch-size", "3")
    assert code == 0, out
    printed = next(line for line in out.splitlines() if line.startswith("{"))
    assert json.loads(printed)["bpd"] == pytest.approx(
        json.loads((tmp_path / "runs/tiny/metrics.jsonl").read_text())["test_bpd"], abs=1e-6
    )
    code, out = run_main("eval", "--json", "--device", "cpu", "--amp", "bf16")
    assert code == 0, out
    assert (
        json.loads(next(line for line in out.splitlines() if line.startswith("{")))["amp"] == "bf16"
    )
    code, out = run_main("eval", "--device", "cpu", "--amp", "fp8")
    assert code != 0 and "'--amp'" in out and "bf16" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["--preset", "quick", "--set", "n_layer=[2,2,2,2]"], "did you mean 'n_layers'"),
        (["--preset", "quick", "--set", "dataset=imagenet"], "dataset must be one of"),
        (["--preset", "cifar10", "--data-root", "nowhere"], "CIFAR-10 not found"),
        (["--preset", "mnist32", "--data-root", "nowhere"], "MNIST not found"),
        (["--preset", "celeba32", "--data-root", "nowhere"], "list_eval_partition.txt"),
        (["--preset", "quick", "--device", "cuda:99"], "CUDA"),  # absent, or no GPU at all
        (
            ["--preset", "quick", "--resume", "--set", "dataset=folder", "--data-root", "imgs"],
            "nothing to resume",
        ),
        (["--preset", "quick", "--out", "afile"], "is a file"),
        (["--preset", "quick", "--seed", "-1"], "seed must be >= 0"),
        (["--preset", "quick", "--set", "lr=.nan"], "lr must be a finite number"),
        (["--preset", "quick", "--name", "../up"], "--name: '../up' must be a plain name"),
    ],
)
def test_cli_train_bad_input_is_one_line(tmp_path, monkeypatch, run_main, args, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    _write_folder(tmp_path / "imgs", size=32)
    code, out = run_main("train", *args)
    assert code != 0
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], out
    assert not (tmp_path / "runs").exists()


def test_cli_stop_saves_the_state_and_exits_130(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "imgs", n=16)
    (tmp_path / "tiny.yaml").write_text(json.dumps({**TINY, "epochs": 1}))
    args = ["train", "--preset", "tiny.yaml", "--data-root", "imgs", "-q"]
    with monkeypatch.context() as patch:  # as if Ctrl-C came before the first step
        patch.setattr("rgflow_cli.train.RichHooks.stop_requested", lambda self: True)
        code, out = run_main(*args)
    assert code == 130 and out.strip().startswith("interrupted at epoch 1, step 0; state saved")
    assert (tmp_path / "runs/tiny/checkpoints/state.pt").is_file()
    code, out = run_main(*args)
    assert code == 0 and "done: test bpd" in out
