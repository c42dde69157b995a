"""Devices: what asking for one says with and without CUDA, bf16 checked before training,
out of GPU memory as one line, a seed that means the same latents on every device, and
the deterministic-kernels switch. (The GPU itself is checked by benchmarks/gpu_check.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from rgflow_core import build_model
from rgflow_core import device as devices
from rgflow_core.errors import UsageError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_asking_for_cuda_without_it(no_cuda):
    assert devices.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(UsageError, match="no CUDA GPU is available here"):
            devices.resolve_device(name)


def test_asking_for_cuda_with_one_gpu(one_gpu):
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=r"cuda:1: this machine has 1 CUDA device\(s\)"):
        devices.resolve_device("cuda:1")


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 0))
    with pytest.raises(UsageError) as refused:
        devices.check_amp("cuda:0", "bf16")
    text = refused.value.render(lambda arg: "--" + arg)
    assert text.startswith("--amp: bf16 needs") and "V100" in text and "7.0" in text
    devices.check_amp("cuda:0", "off")  # float32 is fine
    devices.check_amp("cpu", "bf16")  # the CPU's autocast does bf16


def test_out_of_memory_names_the_batch_and_checkpointing():
    with pytest.raises(UsageError) as refused, devices.explain_out_of_memory("cuda:0", 32):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    text = refused.value.render(lambda arg: "--" + arg.replace("_", "-"))
    assert "32 images per process" in text and "--batch-size" in text
    assert "--checkpointing" in text


def test_the_deterministic_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        devices.use_deterministic_algorithms()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_cpu_generator_draws_the_same_latents_for_a_model_anywhere():
    """The commands seed a CPU generator: the latents are drawn on the CPU and moved, so a
    seed gives the same images on CPU and CUDA (CUDA's own random numbers differ)."""
    model = build_model(tiny_config()).double()
    z = model.sample_latents(3, 0.7, torch.Generator().manual_seed(5))
    again = model.sample_latents(3, 0.7, torch.Generator().manual_seed(5))
    assert z.dtype == torch.float64 and torch.equal(z, again)
    if torch.cuda.is_available():
        on_gpu = model.to("cuda").sample_latents(3, 0.7, torch.Generator().manual_seed(5))
        assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), z)


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """Arguments of a 1-epoch `rgflow train` of a tiny model on 16 grey 8 x 8 images."""
    monkeypatch.chdir(tmp_path)
    for split, n in (("train", 16), ("test", 4)):
        (tmp_path / "imgs" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 10 * i).save(tmp_path / "imgs" / split / f"{i}.png")
    preset = dict(
        dataset="folder", image_size=8, channels=1, kernel_size=2, n_layers=[1, 1, 1], n_res=1,
        n_mlp=1, n_hidden=8, batch_size=8, epochs=1,
    )  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(json.dumps(preset))
    return ["train", "--preset", "tiny.yaml", "--data-root", "imgs", "--device", "cpu", "-q"]


def test_cli_out_of_memory_in_training_is_one_line(tiny_run, monkeypatch, run_main):
    def out_of_memory(self, k, epoch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("rgflow_core.loop.Trainer.step", out_of_memory)
    code, out = run_main(*tiny_run)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith("error: out of memory on cpu at 8 images per process")
    assert "--batch-size" in lines[0] and "--checkpointing" in lines[0]


def test_cli_out_of_gpu_memory_elsewhere_is_one_line(tmp_path, monkeypatch, run_main):
    from rgflow_core import save_model

    save_model(build_model(tiny_config()), tmp_path / "m.safetensors")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("rgflow_core.codec.sample_images", out_of_memory)
    args = ["-c", tmp_path / "m.safetensors", "-o", tmp_path / "s.png", "--device", "cpu"]
    code, out = run_main("sample", *args)
    assert code == 1 and out.strip().startswith("error: out of GPU memory; use a smaller")


def test_cli_deterministic_switch(tiny_run, monkeypatch, run_main):
    called = []
    monkeypatch.setattr(devices, "use_deterministic_algorithms", lambda: called.append(1))
    code, out = run_main(*tiny_run, "--deterministic")
    assert code == 0 and called == [1], out


@pytest.mark.skipif(devices.compile_unavailable("cpu") is not None, reason="no C++ compiler")
def test_a_compiler_that_fails_to_build_is_a_reason_not_a_traceback(tmp_path):
    # a C++ compiler can be there and still fail (no Python headers): training then falls
    # back to the eager kernels with the compiler's own words, instead of torch's traceback
    import os
    import subprocess
    import sys

    fake = tmp_path / "cxx"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = --version ] && exec g++ --version; done\n'
        'echo "cxx: fatal error: Python.h: No such file or directory" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, CXX=str(fake), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    code = "from rgflow_core.device import compile_unavailable; print(compile_unavailable('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (
        f"the C++ compiler ({fake}) failed to build torch.compile's code: "
        "cxx: fatal error: Python.h: No such file or directory"
    )
