"""What a user learns about a checkpoint (`rgflow info`) and where training logs go."""

from __future__ import annotations

import json

from conftest import perturb, tiny_config
from safetensors.torch import load_file, save_file
from test_train import TINY, _write_folder

from rgflow_core import build_model, save_model


def test_info_on_a_checkpoint_written_by_training(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "imgs", n=16)
    (tmp_path / "tiny.yaml").write_text(json.dumps({**TINY, "epochs": 1}))
    code, out = run_main("train", "--preset", "tiny.yaml", "--data-root", "imgs", "-q")
    assert code == 0, out
    code, out = run_main("info", "--json")
    assert code == 0, out
    facts = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert facts["parameters"] > 0 and facts["forward_gflop_per_image"] > 0
    assert facts["latents_per_level"] == {"level 0": 48, "level 1": 12, "level 2": 4}
    p = facts["provenance"]
    assert (p["preset"], p["dataset"], p["epoch"], p["step"]) == ("tiny", "folder", 1, 2)
    assert (p["train_images"], p["test_images"], p["images_seen"]) == (16, 4, 16)
    assert p["test_bpd"] > 0 and p["train_bpd"] > 0 and p["date"].startswith("20")
    assert set(p["versions"]) == {"rgflow", "torch", "python"}
    assert facts["settings"]["lr"] == TINY["lr"]
    code, text = run_main("info", "runs/tiny/checkpoints/last.safetensors")
    assert code == 0 and "latents_per_level" in text and "level 0" in text


def test_info_on_an_old_checkpoint_says_what_is_unknown(tmp_path, run_main):
    # checkpoints of rgflow 0.1 carried only the config, epoch, step, test bpd and dataset
    path = tmp_path / "old.safetensors"
    save_model(perturb(build_model(tiny_config())), path, epoch=3, step=30, test_bpd=4.5)
    meta = {"format": "rgflow-checkpoint/1", "epoch": "3", "step": "30", "test_bpd": "4.5"}
    meta["config"] = json.dumps({**tiny_config().to_dict()})
    save_file(load_file(str(path)), str(path), metadata=meta)
    code, out = run_main("info", path, "--json")
    assert code == 0, out
    p = json.loads(out)["provenance"]
    assert p["epoch"] == 3 and p["test_bpd"] == 4.5
    assert p["preset"].startswith("unknown") and p["versions"].startswith("unknown")


def test_info_lists_the_presets(run_main):
    code, out = run_main("info", "--presets", "--json")
    assert code == 0
    assert {"quick", "celeba32", "msds1", "msds2"} <= set(json.loads(out))


def test_tensorboard_logs_epochs_or_says_how_to_get_it(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "imgs", n=16)
    (tmp_path / "tiny.yaml").write_text(json.dumps({**TINY, "epochs": 1}))
    args = ["train", "--preset", "tiny.yaml", "--data-root", "imgs", "-q", "--tensorboard"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        code, out = run_main(*args)
        assert code == 1 and "pip install 'rgflow[tensorboard]'" in out
        return
    code, out = run_main(*args)
    assert code == 0, out
    events = list((tmp_path / "runs/tiny/tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "imgs", n=16)
    (tmp_path / "tiny.yaml").write_text(json.dumps({**TINY, "epochs": 1}))
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code, out = run_main("train", "--preset", "tiny.yaml", "--data-root", "imgs", "--tensorboard")
    assert code == 1 and out.strip() == (
        "error: --tensorboard needs the tensorboard package: pip install 'rgflow[tensorboard]'"
    )
    assert not (tmp_path / "runs").exists()
