"""Trained models inside the package: names wherever a checkpoint is accepted, their
provenance and quality, the first steps of their recorded commands, and the MSDS images
the commands find (or generate once into the cache) when the user gives none."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
from conftest import perturb, tiny_config

import rgflow_core.builtin as builtin
from rgflow_core import build_model, load_model, read_metadata, save_model
from rgflow_core.errors import CheckpointError
from rgflow_core.msds import msds_complete, write_msds

SHIPPED = ("msds1", "msds1-gaussian", "msds2")  # what the README and the issue promise


@pytest.fixture
def fake_models(tmp_path, monkeypatch):
    """A package whose models folder holds one tiny model, named "tiny"."""
    folder = tmp_path / "package-models"
    folder.mkdir()
    save_model(perturb(build_model(tiny_config())), folder / "tiny.safetensors", dataset="folder")
    entry = {"file": "tiny.safetensors", "dataset": "folder", "prior": "laplace"}
    (folder / builtin.MANIFEST).write_text(json.dumps({"models": {"tiny": entry}}))
    monkeypatch.setattr(builtin, "models_dir", lambda: folder)
    builtin.builtin_models.cache_clear()
    yield folder
    builtin.builtin_models.cache_clear()


def _json_line(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


# --- names ------------------------------------------------------------------------------------


def test_a_name_means_the_built_in_model_unless_a_file_has_it(fake_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert builtin.resolve_model("tiny") == fake_models / "tiny.safetensors"
    assert load_model("tiny").config == tiny_config()
    other = tiny_config(n_hidden=4)
    save_model(build_model(other), tmp_path / "tiny")  # a file named like the model wins
    assert builtin.resolve_model("tiny") == Path("tiny")
    assert load_model("tiny").config == other


def test_an_unknown_name_lists_the_built_in_ones(fake_models, tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="built-in models are tiny"):
        builtin.resolve_model("tinny")
    code, out = run_main("sample", "-c", "tinny", "-n", "1", "-o", "s.png")
    assert code == 1 and out.count("\n") == 1
    assert "no checkpoint file or built-in model named 'tinny'" in out and "tiny" in out
    # a path (with a folder or a suffix) is reported missing as a file
    code, out = run_main("sample", "-c", "gone.safetensors", "-n", "1", "-o", "s.png")
    assert code == 1 and "gone.safetensors does not exist" in out


def test_no_checkpoint_anywhere_suggests_the_built_in_names(fake_models, tmp_path, monkeypatch,
                                                            run_main):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGFLOW_CHECKPOINT", raising=False)
    code, out = run_main("sample", "-n", "1", "-o", "s.png")
    assert code == 1 and "none found under runs/*/checkpoints/" in out
    assert "a built-in model's name (tiny)" in out and "--checkpoint" in out


def test_commands_and_the_environment_accept_names(fake_models, tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    code, out = run_main("sample", "-c", "tiny", "-n", "2", "-o", "s.png", "--device", "cpu")
    assert code == 0 and (tmp_path / "s.png").is_file(), out
    monkeypatch.setenv("RGFLOW_CHECKPOINT", "tiny")
    code, out = run_main("info", "--json")
    facts = _json_line(out)
    assert code == 0 and facts["built_in"]["name"] == "tiny"
    assert facts["checkpoint"] == str(fake_models / "tiny.safetensors")


def test_info_models_lists_names_bpd_size_and_provenance(run_main):
    code, out = run_main("info", "--models", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert set(SHIPPED) <= set(rows)
    for name in SHIPPED:
        row = rows[name]
        assert row["size_bytes"] > 100_000 and 1.5 < row["test_bpd"] < 3.5
        assert row["command"] and all("rgflow train" in c for c in row["command"])
        assert len(row["commit"]) == 40 and len(row["sha256"]) == 64
    code, text = run_main("info", "--models")
    assert code == 0 and all(name in text for name in SHIPPED) and "test bpd" in text


# --- the shipped models -------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_matches_its_provenance(name):
    entry = builtin.builtin_models()[name]
    path = builtin.builtin_path(name)
    assert builtin.file_sha256(path) == entry["sha256"]
    assert builtin.weights_sha256(path) == entry["weights_sha256"]
    meta = read_metadata(name)
    assert meta["test_bpd"] == entry["test_bpd"] and meta["images"] == entry["images_seen"]
    assert meta["dataset"] == entry["dataset"] and meta["config"].prior == entry["prior"]
    assert meta["loss_trace"] == entry["loss_trace"] and len(entry["loss_trace"]) == 100
    assert meta["versions"]["torch"] == entry["torch"]
    model = load_model(name)
    assert sum(p.numel() for p in model.parameters()) > 300_000


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_bpd_on_freshly_generated_images(name, tmp_path):
    from rgflow_core.data import read_msds_images
    from rgflow_core.loop import evaluate

    entry = builtin.builtin_models()[name]
    # images never seen in training or in the recorded test figure: another seed
    write_msds(tmp_path, entry["dataset"], 1, 1000, seed=7)
    images = read_msds_images(tmp_path, entry["dataset"], "test")[0]
    bpd = evaluate(load_model(name), images)
    assert abs(bpd - entry["test_bpd"]) < 0.02, (bpd, entry["test_bpd"])


def _train_args(command: str) -> list[str]:
    """The arguments of a recorded `[VAR=value ...] rgflow train ...` command."""
    words = shlex.split(command)
    while "=" in words[0]:
        words.pop(0)
    assert words[:2] == ["rgflow", "train"], command
    return words[1:]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_the_recorded_command_reproduces_the_first_steps_exactly(name, tmp_path, monkeypatch,
                                                                 run_main):  # fmt: skip
    """A shipped model's command (as it is spelled today), run from nothing (its data
    generated here), takes its first 30 steps with exactly the recorded bpd; CPU training
    is deterministic."""
    from rgflow_cli.train import RichHooks

    entry = builtin.builtin_models()[name]
    (command,) = builtin.replay_commands(entry)
    steps = 30
    seen = []
    monkeypatch.setattr(RichHooks, "step", lambda self, done, *a: seen.append(done))
    monkeypatch.setattr(RichHooks, "stop_requested", lambda self: len(seen) >= steps)
    monkeypatch.chdir(tmp_path)
    code, out = run_main(*_train_args(command), "--device", "cpu", "-q")
    assert code == 130 and "interrupted" in out, out  # stopped after `steps` steps
    import torch

    (state,) = tmp_path.glob("runs/*/checkpoints/state.pt")
    trace = torch.load(state, weights_only=True)["progress"]["trace"]
    assert trace == entry["loss_trace"][:steps]


# --- images for the commands that need them -------------------------------------------------


@pytest.fixture
def small_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RGFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(builtin, "CACHE_TRAIN", 12)
    monkeypatch.setattr(builtin, "CACHE_TEST", 6)
    return tmp_path / "cache"


def test_msds_for_prefers_given_then_own_then_data_then_the_cache(small_cache, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.safetensors"
    own = tmp_path / "own"
    save_model(build_model(tiny_config()), model, dataset="msds2",
               data={"source": str(own / "msds2")})  # fmt: skip
    said = []
    # nothing at hand: generated once into the cache, saying where
    root, name = builtin.msds_for(model, notify=said.append)
    assert (root, name) == (small_cache / "msds", "msds2") and msds_complete(root, name)
    assert len(said) == 1 and str(small_cache / "msds" / "msds2") in said[0]
    builtin.msds_for(model, notify=said.append)
    assert len(said) == 1  # reused, not generated again
    write_msds(tmp_path / "data", "msds2", 2, 2, workers=1)
    assert builtin.msds_for(model) == (Path("data"), "msds2")
    write_msds(own, "msds2", 2, 2, workers=1)
    assert builtin.msds_for(model) == (own, "msds2")
    assert builtin.msds_for(model, "elsewhere", "msds1") == (Path("elsewhere"), "msds1")
    # another model's set is not the model's own: msds1 by default, looked for in data/
    assert builtin.msds_for(model, None, "msds1")[1] == "msds1"


def test_probe_and_mix_fidelity_run_on_a_model_alone(small_cache, tmp_path, monkeypatch,
                                                     run_main):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.safetensors"
    save_model(perturb(build_model(tiny_config(image_size=32, channels=3, kernel_size=4,
                                               n_layers=(1, 1, 1, 1)))),
               model, dataset="msds1")  # fmt: skip
    code, out = run_main("probe", "-c", model, "--json", "--workers", "1", "--device", "cpu")
    assert code == 0, out
    assert f"generating msds1 (12 train + 6 test images) into {small_cache}" in out
    report = _json_line(out)
    assert (report["train_images"], report["test_images"]) == (12, 6)
    code, out = run_main("mix-fidelity", "-c", model, "--pairs", "3", "--json", "--device", "cpu")
    assert code == 0 and "generating" not in out, out
    report = _json_line(out)
    assert report["test_images"] == 6 and report["dataset"] == "msds1"
    assert all(math.isfinite(r["global_to_a"]) for r in report["rows"])


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RGFLOW_CACHE", str(blocker / "cache"))
    save_model(build_model(tiny_config(image_size=32, channels=3, kernel_size=4,
                                       n_layers=(1, 1, 1, 1))),
               tmp_path / "m.safetensors", dataset="msds1")  # fmt: skip
    code, out = run_main("mix-fidelity", "-c", tmp_path / "m.safetensors", "--device", "cpu")
    assert code == 1 and "Traceback" not in out
    assert out.strip().splitlines()[-1].startswith("error: cannot write the MSDS cache in ")
    assert "RGFLOW_CACHE" in out and blocker.read_text() == "not a folder"
