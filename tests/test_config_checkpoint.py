"""Presets, config validation and self-describing checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, tiny_config

from rgflow_core import (
    CheckpointError,
    ConfigError,
    ModelConfig,
    build_model,
    load_model,
    load_preset,
    preset_names,
    read_metadata,
    save_model,
)
from rgflow_core.config import parse_overrides


def test_shipped_presets():
    assert {"celeba32", "mnist32", "cifar10", "chair600", "msds1", "msds2", "quick"} <= set(
        preset_names()
    )


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_builds(name):
    preset = load_preset(name)
    # the full-size models take a while to build: shrink the width, keep the structure
    small = load_preset(name, {"n_hidden": 8})
    model = build_model(small.model)
    assert small.model.n_layers == preset.model.n_layers
    x = torch.randint(0, 256, (2, preset.model.channels, 32, 32), dtype=torch.uint8)
    assert model.encode(x).shape == x.shape


# The defaults of the paper's code (hongyehu/RG-Flow, args.py), which it trained CelebA
# with, and its CelebA transforms (utils/data_utils.py: CenterCrop(148), Resize(32),
# RandomHorizontalFlip): quoted from there, not from our YAML.
PAPER_CELEBA = {
    "channels": 3, "image_size": 32, "prior": "laplace", "subnet": "rnvp", "kernel_size": 4,
    "n_layers": [8, 6, 4, 2], "n_res": 4, "n_mlp": 2, "n_hidden": 512, "batch_size": 64,
    "lr": 1e-3, "weight_decay": 5e-2, "epochs": 500, "grad_clip": 1.0,
    "center_crop": 148, "flip": True,
}  # fmt: skip
# where the preset departs from it on purpose (the YAML says why): nowhere
CELEBA_DEPARTURES: dict = {}


def test_celeba_preset_matches_the_paper():
    settings = load_preset("celeba32").to_flat()
    differences = {k: settings[k] for k, v in PAPER_CELEBA.items() if settings[k] != v}
    assert differences == CELEBA_DEPARTURES
    # the paper's code steps AdamW at a constant rate (main.py has no scheduler)
    assert settings["dataset"] == "celeba32" and settings["lr_schedule"] == "constant"


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="'n_layer'.*did you mean 'n_layers'"):
        load_preset("quick", {"n_layer": [2, 2, 2, 2]})


@pytest.mark.parametrize(
    "key,value", [("n_hidden", "wide"), ("n_layers", [1.5, 2]), ("flip", 1), ("lr", "fast")]
)
def test_wrong_types_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        load_preset("quick", {key: value})


def test_inconsistent_levels():
    with pytest.raises(ConfigError, match="one entry in 1..256 per RG level"):
        load_preset("quick", {"n_layers": [2, 2]})


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'quick'"):
        load_preset("quik")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_hidden: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(bad)


def test_overrides_parse_as_yaml():
    assert parse_overrides(["n_layers=[2,2,2,2]", "flip=true", "lr=3e-4"]) == {
        "n_layers": [2, 2, 2, 2],
        "flip": True,
        "lr": "3e-4",  # YAML 1.1 keeps it a string; load_preset converts
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_layers"])


def test_checkpoint_round_trip(tmp_path):
    model = perturb(build_model(tiny_config(channels=3)))
    path = tmp_path / "model.safetensors"
    save_model(model, path, epoch=3, step=120, test_bpd=4.25)
    loaded = load_model(path)
    y = torch.randn(4, 3, 8, 8)
    assert torch.equal(loaded.log_prob(y), model.log_prob(y))
    meta = read_metadata(path)
    assert meta["config"] == model.config
    assert (meta["epoch"], meta["step"], meta["test_bpd"]) == (3, 120, 4.25)
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(build_model(tiny_config()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an rgflow checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_float_keys_accept_exponent_strings():
    assert load_preset("quick", parse_overrides(["lr=3e-4"])).train.lr == 3e-4


@pytest.mark.parametrize("subnet", ["rnvp", "ar"])
@pytest.mark.parametrize(
    "size",
    [
        dict(image_size=8, kernel_size=2, n_layers=(2, 1, 1)),
        dict(image_size=8, kernel_size=2, n_layers=(1, 1, 1), channels=1, n_mlp=1, n_res=3),
        dict(image_size=16, kernel_size=4, n_layers=(1, 2, 1), n_hidden=7),
    ],
)
def test_the_model_size_is_known_before_it_is_built(subnet, size):
    from rgflow_core.config import ModelConfig
    from rgflow_core.flow import parameter_count

    cfg = ModelConfig(**size, subnet=subnet)
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def test_block_grid_travels_with_the_checkpoint_and_old_ones_load_unchanged(tmp_path):
    # the default is not written, so checkpoints and run states from before the option
    # compare equal to today's (and older rgflow versions read today's default ones)
    assert "block_grid" not in tiny_config().to_dict()
    assert ModelConfig(**tiny_config().to_dict()).block_grid == "shifted_first"
    model = perturb(build_model(tiny_config(block_grid="aligned_first")))
    save_model(model, tmp_path / "a.safetensors")
    loaded = load_model(tmp_path / "a.safetensors")
    assert loaded.config.block_grid == "aligned_first"
    assert [type(s).__name__ for s in loaded.levels[0].sublayers()] == ["BlockLayer"] * 2
    assert loaded.levels[0].sublayers()[0] is loaded.levels[0].decimator
    y = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.log_prob(y), model.log_prob(y))
    assert load_preset("quick", {"block_grid": "aligned_first"}).to_flat()["block_grid"] == (
        "aligned_first"
    )
    with pytest.raises(ConfigError, match="block_grid must be one of"):
        load_preset("quick", {"block_grid": "diagonal"})


def test_float64_checkpoints_load_as_float64(tmp_path):
    model = perturb(build_model(tiny_config()).double())
    save_model(model, tmp_path / "d.safetensors")
    loaded = load_model(tmp_path / "d.safetensors")
    assert next(loaded.parameters()).dtype == torch.float64
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(y), model.log_prob(y))


def test_a_model_computes_in_its_own_dtype_whatever_it_is_given():
    model = perturb(build_model(tiny_config()).double())
    y = torch.randn(2, 1, 8, 8)  # float32 data for a float64 model
    assert torch.equal(model.log_prob(y), model.log_prob(y.double()))
    z, _ = model(y)
    assert z.dtype == torch.float64 and model.inverse(z.float())[0].dtype == torch.float64
    assert model.float().log_prob(y.double()).dtype == torch.float32
