"""`rgflow import` / `rgflow export`: models trained with the paper's public code.

The golden files under tests/data/reference were written by
`benchmarks/reference_fixtures.py --ref-code DIR` with the paper's own code: tiny float64
models with random weights, saved as its `main.py` saves them, and what that code computes
on fixed inputs. These tests need neither that code nor the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image

from rgflow_core import build_model, load_model, load_preset, read_metadata, save_model
from rgflow_core.errors import CheckpointError
from rgflow_core.flow import parameter_count
from rgflow_core.reference import (
    PREFIX,
    from_reference,
    import_reference,
    infer_config,
    read_reference,
    reference_shapes,
)

DATA = Path(__file__).parent / "data" / "reference"
CASES = ["laplace_k2", "gaussian_rgb_multigpu", "laplace_k4_l16_no_optimizer"]
TOLERANCE = 1e-5  # nats per image, and the same for latents and inverses


def golden(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def tensor(entry: dict) -> torch.Tensor:
    return torch.tensor(entry["values"], dtype=torch.float64).view(entry["shape"])


def source(name: str) -> Path:
    return DATA / golden(name)["file"]


def flow_state(name: str) -> dict[str, torch.Tensor]:
    """The flow state of a golden file, keys as written (prefix and all)."""
    return dict(torch.load(source(name), weights_only=True)["flow"])


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Each golden model imported once through the command line, as a user would."""
    from rgflow_cli.main import main

    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in CASES:
        out[name] = root / f"{name}.safetensors"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["rgflow", "import", str(source(name)), "-o", str(out[name])])
            try:
                main()
            except SystemExit as exit_:
                assert not exit_.code, name
    return out


# --- exact agreement with the paper's code --------------------------------------------------


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("kernel", ["reference", "fast"])
def test_imported_model_computes_what_the_papers_code_computed(imported, name, kernel):
    g = golden(name)
    model = load_model(imported[name])
    model.kernel = kernel
    assert model.config.block_grid == "aligned_first"
    assert parameter_count(model.config) == g["nparams"]
    y = tensor(g["logit"]["y"])
    with torch.no_grad():
        z, ladj = model(y)
        log_prob = model.log_prob(y)
        x, inv_ladj = model.inverse(tensor(g["inverse"]["z"]))
    want = g["forward"]
    assert float((log_prob - tensor(want["log_prob"])).abs().max()) < TOLERANCE
    assert float((z - tensor(want["z"])).abs().max()) < TOLERANCE
    assert float((ladj - tensor(want["ldj"])).abs().max()) < TOLERANCE
    assert float((x - tensor(g["inverse"]["x"])).abs().max()) < TOLERANCE
    assert float((inv_ladj - tensor(g["inverse"]["ldj"])).abs().max()) < TOLERANCE
    # the preprocessing is the paper's logit transform, log-determinant included
    y2, pre_ladj = model.preprocess(tensor(g["logit"]["x"]))
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(pre_ladj, tensor(g["logit"]["ldj"]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_the_other_grid_order_disagrees(imported, name):
    """Negative control: the same weights applied shifted grid first are another model."""
    g = golden(name)
    model = load_model(imported[name])
    wrong = build_model(dataclasses.replace(model.config, block_grid="shifted_first")).double()
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():
        diff = (wrong.log_prob(tensor(g["logit"]["y"])) - tensor(g["forward"]["log_prob"])).abs()
    assert float(diff.max()) > 1e-2


def test_inferred_architecture_follows_the_papers_arguments():
    for name in CASES:
        g = golden(name)
        args = g["paper_args"]
        cfg = import_reference(source(name))[0].config
        H = len(cfg.n_layers)
        nlayers = [int(n) for n in args["nlayers"].split(",")]
        assert cfg.n_layers == tuple(nlayers if len(nlayers) > 1 else nlayers * H)
        assert (cfg.channels, cfg.image_size, cfg.kernel_size, cfg.prior) == (
            args["nchannels"], args["L"], args["kernel_size"], args["prior"]
        )  # fmt: skip
        assert (cfg.n_res, cfg.n_mlp, cfg.n_hidden) == tuple(
            int(args[k]) for k in ("nresblocks", "nmlp", "nhidden")
        )


def test_celeba32_sized_model_is_the_celeba32_preset():
    """The paper's CelebA model (keys and shapes recorded from its code) is our preset."""
    recorded = json.loads((DATA / "shapes.json").read_text())["celeba32"]
    shapes = {k: tuple(v) for k, v in recorded["shapes"].items()}
    cfg = infer_config(shapes, prior_scale=recorded["prior_scale"])
    preset = load_preset("celeba32").model
    assert cfg == dataclasses.replace(preset, block_grid="aligned_first")
    assert parameter_count(cfg) == recorded["nparams"] == 100_647_680
    assert reference_shapes(cfg) == shapes  # and we write back exactly those keys


@pytest.mark.parametrize(
    "name, message",
    [
        ("per_level_nhidden", "per-level nhidden (4, 8): rgflow uses one"),
        ("per_level_nresblocks", "per-level nresblocks (1, 2): rgflow uses one"),
        ("per_level_nmlp", "per-level nmlp (1, 2): rgflow uses one"),
        ("ar_subnet", "`ar` subnet"),
    ],
)
def test_designs_rgflow_cannot_represent_are_refused_saying_why(name, message):
    recorded = json.loads((DATA / "shapes.json").read_text())[name]
    shapes = {k: tuple(v) for k, v in recorded["shapes"].items()}
    with pytest.raises(CheckpointError, match=re.escape(message)):
        infer_config(shapes, prior_scale=recorded["prior_scale"])


# --- every shape the paper's code writes ------------------------------------------------------


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_with_or_without_prefix_optimizer_or_wrapper_the_weights_are_the_same(tmp_path):
    flow = flow_state("laplace_k2")
    plain = read_reference(source("laplace_k2"))
    assert plain.has_optimizer and not plain.prefixed and plain.epoch == 12
    variants = {
        "prefixed.state": {"flow": {PREFIX + k: v for k, v in flow.items()}},
        "flow_only.state": {"flow": flow},
        "bare.state": flow,  # the paper's loader also takes the state dict itself
    }
    for file, obj in variants.items():
        ref = read_reference(_save(tmp_path / file, obj))
        assert ref.prefixed == (file == "prefixed.state") and not ref.has_optimizer
        assert ref.epoch is None
        assert set(ref.flow) == set(plain.flow)
        assert all(torch.equal(ref.flow[k], plain.flow[k]) for k in plain.flow)
    prefixed = read_reference(source("gaussian_rgb_multigpu"))
    assert prefixed.prefixed and prefixed.has_optimizer


def test_a_float32_run_imports_as_a_float32_model(tmp_path, run_main):
    g = golden("laplace_k4_l16_no_optimizer")
    flow = {k: v.float() for k, v in flow_state("laplace_k4_l16_no_optimizer").items()}
    src = _save(tmp_path / "7.state", {"flow": flow})
    code, out = run_main("import", src, "-o", tmp_path / "m.safetensors")
    assert code == 0, out
    model = load_model(tmp_path / "m.safetensors")
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        log_prob = model.log_prob(tensor(g["logit"]["y"]).float()).double()
    assert float((log_prob - tensor(g["forward"]["log_prob"])).abs().max()) < 1e-2


def test_prior_is_read_from_prior_scale_or_given(tmp_path):
    flow = flow_state("laplace_k2")
    assert import_reference(source("laplace_k2"))[0].config.prior == "laplace"
    assert import_reference(source("laplace_k2"), "gaussian")[0].config.prior == "gaussian"
    odd = _save(tmp_path / "odd.state", {"flow": {**flow, "prior.scale": torch.tensor(0.3)}})
    with pytest.raises(CheckpointError, match="neither Laplace"):
        import_reference(odd)
    assert import_reference(odd, "laplace")[0].config.prior == "laplace"
    none = _save(
        tmp_path / "none.state", {"flow": {k: v for k, v in flow.items() if k != "prior.scale"}}
    )
    with pytest.raises(CheckpointError, match="no prior.scale"):
        import_reference(none)


# --- safe reading and one-line errors -----------------------------------------------------------


class _Opens:
    """Unpickling this would open (create) a file, if anything ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_names_code_is_refused_and_nothing_in_it_runs(tmp_path, run_main):
    marker = tmp_path / "ran"
    src = _save(
        tmp_path / "evil.state", {"flow": flow_state("laplace_k2"), "x": _Opens(str(marker))}
    )
    code, out = run_main("import", src, "-o", tmp_path / "m.safetensors")
    assert code == 1 and out.count("\n") == 1 and "error: refused" in out
    assert "io.open" in out and "nothing in it was run" in out
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()
    import argparse

    ns = _save(
        tmp_path / "ns.state", {"flow": flow_state("laplace_k2"), "args": argparse.Namespace()}
    )
    code, out = run_main("import", ns, "-o", tmp_path / "m.safetensors")
    assert code == 1 and "argparse.Namespace" in out


def _corrupt(tmp_path: Path, kind: str) -> Path:
    flow = flow_state("laplace_k2")
    key = "layers.1.t_layers.0.res_blocks.1.1.weight_v"
    if kind == "missing":
        del flow[key]
    elif kind == "shape":
        flow[key] = torch.zeros(3, 3, dtype=torch.float64)
    elif kind == "nan":
        flow[key] = flow[key].clone()
        flow[key][0, 0] = math.nan
    elif kind == "layers":
        flow = {k: v for k, v in flow.items() if not k.startswith("layers.5.")}
    return _save(tmp_path / f"{kind}.state", {"flow": flow})


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "missing key layers.1.t_layers.0.res_blocks.1.1.weight_v"),
        ("shape", "layers.1.t_layers.0.res_blocks.1.1.weight_v has shape (3, 3), expected (4, 4)"),
        ("nan", "weight layers.1.t_layers.0.res_blocks.1.1.weight_v holds NaN"),
        ("layers", "numbered 0, 1, 2, 3, 4"),
    ],
)
def test_broken_weights_are_one_clear_line(tmp_path, run_main, kind, message):
    code, out = run_main("import", _corrupt(tmp_path, kind), "-o", tmp_path / "m.safetensors")
    assert code == 1 and out.count("\n") == 1, out
    assert out.startswith("error: ") and message in out, out


def test_files_that_are_not_weights_are_one_clear_line(tmp_path, run_main):
    lfs = tmp_path / "500.state"
    lfs.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 1207959552\n"
    )
    truncated = tmp_path / "1.state"
    truncated.write_bytes(source("laplace_k2").read_bytes()[:5000])
    cases = {
        lfs: "Git LFS pointer file, not the weights",
        truncated: "not a readable checkpoint of the paper's code",
        tmp_path / "nothing.state": "does not exist",
        _save(tmp_path / "list.state", [torch.zeros(1)]): "holds no state dict",
        _save(tmp_path / "noflow.state", {"flow": {}}): "holds no flow weights",
    }
    for path, message in cases.items():
        code, out = run_main("import", path, "-o", tmp_path / "m.safetensors")
        assert code == 1 and out.count("\n") == 1 and message in out, (path, out)
    code, out = run_main("import", source("laplace_k2"), "-o", tmp_path / "m.safetensors",
                         "--prior", "cauchy")  # fmt: skip
    assert code != 0 and "cauchy" in out


def test_missing_prior_scale_names_the_flag(tmp_path, run_main):
    flow = {k: v for k, v in flow_state("laplace_k2").items() if k != "prior.scale"}
    src = _save(tmp_path / "p.state", {"flow": flow})
    code, out = run_main("import", src, "-o", tmp_path / "m.safetensors")
    assert code == 1 and "say which prior with --prior" in out
    code, out = run_main("import", src, "-o", tmp_path / "m.safetensors", "--prior", "laplace")
    assert code == 0, out


def test_import_and_export_never_overwrite_their_input(tmp_path, run_main, imported):
    src = tmp_path / "3.state"
    src.write_bytes(source("laplace_k2").read_bytes())
    before = src.read_bytes()
    code, out = run_main("import", src, "-o", src)
    assert code == 1 and "is also an input" in out and src.read_bytes() == before
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(imported["laplace_k2"].read_bytes())
    code, out = run_main("export", ckpt, "-o", ckpt)
    assert code == 1 and "is also an input" in out
    assert load_model(ckpt).config.block_grid == "aligned_first"


# --- provenance, export, and the other commands -------------------------------------------------


def test_info_shows_where_an_imported_model_came_from(imported, run_main):
    code, out = run_main("info", imported["laplace_k2"], "--json")
    assert code == 0, out
    facts = json.loads(out)
    src = facts["imported_from"]
    assert src["format"] == "rg-flow-reference" and src["epoch"] == 12
    assert src["file"] == "12.state" and src["optimizer"] is True
    assert src["sha256"] == read_reference(source("laplace_k2")).sha256
    assert (
        facts["provenance"]["epoch"] == 12
        and facts["architecture"]["block_grid"] == "aligned_first"
    )
    meta = read_metadata(imported["gaussian_rgb_multigpu"])
    assert meta["source"]["multi_gpu_prefix"] is True and meta["epoch"] == 3
    assert "note" not in facts


@pytest.mark.parametrize("name", CASES)
def test_export_then_import_gives_back_the_same_weights_bit_for_bit(
    imported, tmp_path, run_main, name
):
    out = tmp_path / "9.state"
    code, text = run_main("export", imported[name], "-o", out)
    assert code == 0, text
    assert "--nlayers=" in text and "out_save/EPOCH.state" in text
    # the paper's file, key for key: its loader reads it strictly
    written = torch.load(out, weights_only=True)
    assert set(written) == {"flow"}
    original = {k.removeprefix(PREFIX): v for k, v in flow_state(name).items()}
    assert set(written["flow"]) == set(original)
    for key, value in original.items():
        if not key.endswith(("saved_mean", "saved_var")):
            assert torch.equal(written["flow"][key], value), key
    code, text = run_main("import", out, "-o", tmp_path / "again.safetensors")
    assert code == 0, text
    first = load_model(imported[name]).state_dict()
    again = load_model(tmp_path / "again.safetensors").state_dict()
    assert set(first) == set(again)
    assert all(torch.equal(first[k], again[k]) and first[k].dtype == again[k].dtype for k in first)


def test_export_refuses_models_the_papers_code_would_compute_differently(tmp_path, run_main):
    for cfg, message in [
        (tiny_config(), "applies the aligned grid first"),
        (tiny_config(subnet="ar", block_grid="aligned_first"), "'ar' subnet cannot be exported"),
    ]:
        path = tmp_path / "m.safetensors"
        save_model(perturb(build_model(cfg)), path)
        code, out = run_main("export", path, "-o", tmp_path / "1.state")
        assert code == 1 and out.count("\n") == 1 and message in out, out
        assert not (tmp_path / "1.state").exists()


def test_the_other_commands_work_on_an_imported_model(imported, tmp_path, run_main):
    ckpt = imported["gaussian_rgb_multigpu"]
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[::-1].copy()).save(tmp_path / "b.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cpu = ("--device", "cpu")
    for args in [
        ("sample", "-c", ckpt, "-n", 2, *cpu, "-o", tmp_path / "s.png"),
        ("encode", "-c", ckpt, tmp_path / "a.png", *cpu, "-o", tmp_path / "z.safetensors"),
        ("decode", tmp_path / "z.safetensors", "-c", ckpt, *cpu, "-o", tmp_path / "d.png"),
        ("mix", "-c", ckpt, tmp_path / "a.png", tmp_path / "b.png", "--scale", 1, *cpu,
         "-o", tmp_path / "m.png"),
        ("inpaint", "-c", ckpt, tmp_path / "a.png", tmp_path / "mask.png", *cpu,
         "--steps", 3, "-o", tmp_path / "f.png"),
        ("receptive-field", "-c", ckpt, "--samples", 1, *cpu, "-o", tmp_path / "rf.png"),
    ]:  # fmt: skip
        code, out = run_main(*args)
        assert code == 0, (args[0], out)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), pixels)  # exact round trip


def test_from_reference_checks_the_masks():
    flow = {k.removeprefix(PREFIX): v for k, v in flow_state("laplace_k2").items()}
    cfg = import_reference(source("laplace_k2"))[0].config
    flow["layers.2.mask_left"] = 1 - flow["layers.2.mask_left"]
    with pytest.raises(CheckpointError, match="layers.2.mask_left is not the checkerboard"):
        from_reference(flow, cfg)


def test_the_legacy_torch_format_reads_too(tmp_path):
    """A file saved in torch's older, non-zip format (no mmap then) reads the same."""
    path = tmp_path / "4.state"
    torch.save({"flow": flow_state("laplace_k2")}, path, _use_new_zipfile_serialization=False)
    ref = read_reference(path)
    assert ref.epoch == 4 and set(ref.flow) == set(read_reference(source("laplace_k2")).flow)


def test_large_indices_in_a_small_file_allocate_nothing():
    """Indices come from the file: a few keys claiming a huge model fail fast, in a line."""
    shapes = {k: tuple(v.shape) for k, v in read_reference(source("laplace_k2")).flow.items()}
    cases = {
        "layers.999999999999.mask_left": "numbered 0, 1, 2, 3, 4, 5, 999999999999",
        "layers.1.s_layers.999999999999.scale.scale": "missing key layers.1.s_layers.2.",
        "layers.1.s_layers.0.res_blocks.99999999.1.weight_v": "per-level nresblocks (2, 100000000)",
        "layers.1.s_layers.0.res_blocks.0.99999999.weight_v": "per-level nmlp (1, 49999999)",
    }
    for key, message in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(message)):
            infer_config({**shapes, key: (4, 4)})


def test_export_names_the_papers_arguments_and_folder():
    from rgflow_core.reference import reference_args, reference_run_name

    cfg = dataclasses.replace(load_preset("celeba32").model, block_grid="aligned_first")
    assert reference_args(cfg) == [
        "--nchannels=3", "--L=32", "--prior=laplace", "--kernel_size=4", "--nlayers=8,6,4,2",
        "--nresblocks=4", "--nmlp=2", "--nhidden=512",
    ]  # fmt: skip
    assert reference_run_name(cfg) == "laplace_nl8,6,4,2_nr4_nm2_nh512"  # the paper's own name
    small = tiny_config(prior="gaussian", n_layers=(2, 2, 2))
    assert reference_run_name(small) == "ks2_nl2_nr2_nm1_nh8"
