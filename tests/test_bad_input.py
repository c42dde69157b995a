"""Every command against a catalogue of bad values and bad files.

Each case must end with exit code != 0, exactly one line that starts with `error:`, no
traceback, every input file unchanged, and nothing written where the command ran.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image
from safetensors.torch import save as st_save

from rgflow_core import build_model, save_model
from rgflow_core.codec import encode_images
from rgflow_core.latents import save_latents


def _checkpoint_with(path: Path, model, **config_changes) -> Path:
    """A checkpoint whose config metadata says something else than its weights."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = {**model.config.to_dict(), **config_changes}
    meta = {"format": "rgflow-checkpoint/1", "config": json.dumps(config)}
    path.write_bytes(st_save(tensors, metadata=meta))
    return path


# what asking for a GPU that is not there says, on a machine without CUDA and with it
ABSENT_GPU = "CUDA device(s)" if torch.cuda.is_available() else "no CUDA GPU"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    gen = np.random.default_rng(0)
    model = perturb(build_model(tiny_config(channels=3)), scale=0.3)
    f = {"ckpt": root / "model.safetensors", "dir": root / "adir", "file": root / "afile"}
    save_model(model, f["ckpt"])
    f["dir"].mkdir()
    f["file"].write_text("a plain file")
    for name, array in {
        "img": gen.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "img2": gen.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "grey": gen.integers(0, 256, (8, 8), dtype=np.uint8),
        "wide": gen.integers(0, 256, (10, 12, 3), dtype=np.uint8),
        "mask": np.where(np.arange(64).reshape(8, 8) % 3 == 0, 255, 0).astype(np.uint8),
        "bigmask": np.zeros((16, 16), dtype=np.uint8),
    }.items():
        f[name] = root / f"{name}.png"
        Image.fromarray(array).save(f[name])
    f["deep"] = root / "deep.png"  # 16-bit grey: must not be clipped to 8 bits silently
    Image.fromarray(gen.integers(0, 65535, (8, 8), dtype=np.uint16)).save(f["deep"])
    f["bomb"] = root / "bomb.png"  # 81 megapixels in a few kilobytes
    Image.new("L", (9000, 9000)).save(f["bomb"])
    f["text"] = root / "notes.png"
    f["text"].write_text("not an image")
    f["loop"] = root / "loop.png"
    os.symlink(f["loop"], f["loop"])
    f["truncated"] = root / "truncated.safetensors"
    f["truncated"].write_bytes(f["ckpt"].read_bytes()[:300])
    f["header"] = root / "header.safetensors"  # claims a 1 TB header
    f["header"].write_bytes((2**40).to_bytes(8, "little") + b"{}")
    f["foreign"] = root / "foreign.safetensors"
    f["foreign"].write_bytes(st_save({"w": torch.zeros(2)}))
    for name, change in {
        "n_res_huge": {"n_res": 10**7},
        "size_huge": {"image_size": 2**30},
        "hidden_huge": {"n_hidden": 10**9},
        "channels_bool": {"channels": True},
        "layers_float": {"n_layers": [1.5, 1, 1]},
        "prior_unknown": {"prior": "cauchy"},
    }.items():
        f[name] = _checkpoint_with(root / f"{name}.safetensors", model, **change)
    nan_model = build_model(tiny_config(channels=3))
    with torch.no_grad():
        next(nan_model.parameters()).fill_(float("nan"))
    f["nan_weights"] = root / "nan.safetensors"
    save_model(nan_model, f["nan_weights"])
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f["img"]))])).permute(0, 3, 1, 2)
    z, bpd = encode_images(model.eval(), images)
    f["latents"] = save_latents(root / "z.safetensors", model, z, bpd, ["img.png"])
    f["no_latents"] = save_latents(root / "z0.safetensors", model, z[:0], bpd[:0], [])
    f["nan_latents"] = save_latents(
        root / "znan.safetensors", model, torch.full_like(z, math.nan), bpd, ["x"]
    )
    other = perturb(build_model(tiny_config(channels=1)), scale=0.3)
    f["other_latents"] = save_latents(
        root / "zother.safetensors", other, torch.zeros(1, 1, 8, 8), torch.zeros(1), ["x"]
    )
    f["preset_latin1"] = root / "latin1.yaml"
    f["preset_latin1"].write_bytes("lr: 0.01 # caf\xe9\n".encode("latin-1"))
    f["preset_deep"] = root / "deep.yaml"
    f["preset_deep"].write_text("lr: " + "[" * 5000 + "]" * 5000 + "\n")
    f["preset_list"] = root / "list.yaml"
    f["preset_list"].write_text("- 1\n- 2\n")
    return f


BAD = {
    # sample
    "sample -n 0": ("sample -c {ckpt} -n 0", "--num: must be in 1..100000"),
    "sample -n 1e6": ("sample -c {ckpt} -n 1000000", "--num: must be in 1..100000"),
    "sample batch 0": ("sample -c {ckpt} --batch-size 0", "--batch-size: must be in 1.."),
    "sample batch huge": ("sample -c {ckpt} --batch-size 1000000", "--batch-size: must be in 1.."),
    "sample T nan": ("sample -c {ckpt} -t nan", "--temperature: must be a finite number"),
    "sample T inf": ("sample -c {ckpt} -t inf", "--temperature: must be a finite number"),
    "sample T negative": ("sample -c {ckpt} -t -1", "--temperature: must be > 0"),
    "sample level T out of range": (
        "sample -c {ckpt} --level-temperature 9=0.5",
        "--level-temperature: 9 is out of range",
    ),
    "sample level T nan": (
        "sample -c {ckpt} --level-temperature 0=nan",
        "--level-temperature: must be a finite number",
    ),
    "sample zoom 0": ("sample -c {ckpt} --zoom 0", "'--zoom'"),
    "sample zoom huge": ("sample -c {ckpt} --zoom 100000", "'--zoom'"),
    "sample nrow 0": ("sample -c {ckpt} --nrow 0", "'--nrow'"),
    "sample seed negative": ("sample -c {ckpt} --seed -1", "'--seed'"),
    "sample seed 2**70": (f"sample -c {{ckpt}} --seed {2**70}", "'--seed'"),
    "sample -o is the checkpoint": ("sample -c {ckpt} -o {ckpt}", "is also an input"),
    "sample -o is a folder": ("sample -c {ckpt} -o {dir}", "is a folder; give a file name"),
    "sample -o under a file": ("sample -c {ckpt} -o {file}/x.png", "is a file, not a folder"),
    "sample -o name too long": ("sample -c {ckpt} -o " + "n" * 300 + ".png", "too long"),
    "sample --out-dir is a file": ("sample -c {ckpt} --out-dir {file}", "is a file; give a folder"),
    "checkpoint missing": ("sample -c {dir}/nope.safetensors", "does not exist"),
    "checkpoint is a folder": ("sample -c {dir}", "is a folder, not a file"),
    "checkpoint is a symlink loop": ("sample -c {loop}", "symbolic link that leads nowhere"),
    "checkpoint is text": ("sample -c {text}", "not a readable safetensors file"),
    "checkpoint truncated": ("sample -c {truncated}", "not a readable safetensors file"),
    "checkpoint header 1 TB": ("sample -c {header}", "not a readable safetensors file"),
    "checkpoint not rgflow": ("sample -c {foreign}", "not an rgflow checkpoint"),
    "checkpoint n_res 1e7": ("sample -c {n_res_huge}", "n_res must be >= 1 and <= 256"),
    "checkpoint image_size 2**30": ("sample -c {size_huge}", "image_size must be"),
    "checkpoint n_hidden 1e9": ("sample -c {hidden_huge}", "n_hidden must be"),
    "checkpoint channels true": ("sample -c {channels_bool}", "channels must be of type int"),
    "checkpoint n_layers floats": (
        "sample -c {layers_float}",
        "n_layers must be a list of integers",
    ),
    "checkpoint unknown prior": ("sample -c {prior_unknown}", "prior must be one of"),
    "checkpoint NaN weights": ("sample -c {nan_weights}", "holds NaN or infinite values"),
    "device unknown": ("sample -c {ckpt} --device tpu", "--device: unknown device"),
    "device absent GPU": ("sample -c {ckpt} --device cuda:99", ABSENT_GPU),
    # encode / decode
    "encode missing image": ("encode -c {ckpt} {dir}/nope.png", "does not exist"),
    "encode text image": ("encode -c {ckpt} {text}", "not a readable image"),
    "encode folder as image": ("encode -c {ckpt} {dir}", "is a folder"),
    "encode symlink loop": ("encode -c {ckpt} {loop}", "symbolic link"),
    "encode wrong size": ("encode -c {ckpt} {wide}", "pass --resize"),
    "encode grey into RGB": ("encode -c {ckpt} {grey}", "has mode L"),
    "encode 16-bit": ("encode -c {ckpt} {deep}", "has mode I;16"),
    "encode decompression bomb": ("encode -c {ckpt} {bomb} --resize", "more than this tool reads"),
    "encode -o is the image": ("encode -c {ckpt} {img} -o {img}", "is also an input"),
    "encode -o is the checkpoint": ("encode -c {ckpt} {img} -o {ckpt}", "is also an input"),
    "decode -o is the latents": ("decode -c {ckpt} {latents} -o {latents}", "is also an input"),
    "decode text": ("decode -c {ckpt} {text}", "not a readable safetensors file"),
    "decode no images": ("decode -c {ckpt} {no_latents}", "holds no latents"),
    "decode NaN latents": ("decode -c {ckpt} {nan_latents}", "NaN or infinite"),
    "decode another model's": ("decode -c {ckpt} {other_latents}", "encoded by another model"),
    "decode batch 0": ("decode -c {ckpt} {latents} --batch-size 0", "--batch-size: must be in"),
    # mix
    "mix scale 0": ("mix -c {ckpt} {img} {img2} --scale 0", "--scale: 0 is out of range"),
    "mix scale 99": ("mix -c {ckpt} {img} {img2} --scale 99", "--scale: 99 is out of range"),
    "mix no scale": ("mix -c {ckpt} {img} {img2}", "--scale S"),
    "mix -o is A": ("mix -c {ckpt} {img} {img2} --scale 1 -o {img}", "is also an input"),
    "mix --grid is B": ("mix -c {ckpt} {img} {img2} --scale 1 --grid {img2}", "is also an input"),
    "mix -o equals --grid": (
        "mix -c {ckpt} {img} {img2} --scale 1 -o {dir}/m --grid {dir}/m",
        "named twice as an output",
    ),
    # inpaint
    "inpaint -o is the image": ("inpaint -c {ckpt} {img} {mask} -o {img}", "is also an input"),
    "inpaint --compare is the image": (
        "inpaint -c {ckpt} {img} {mask} --compare {img}",
        "is also an input",
    ),
    "inpaint lr nan": ("inpaint -c {ckpt} {img} {mask} --lr nan", "--lr: must be a finite number"),
    "inpaint steps negative": (
        "inpaint -c {ckpt} {img} {mask} --steps -1",
        "--steps: must be in 0..",
    ),
    "inpaint restarts 0": (
        "inpaint -c {ckpt} {img} {mask} --restarts 0",
        "--restarts: must be in 1..",
    ),
    "inpaint noise inf": (
        "inpaint -c {ckpt} {img} {mask} --noise inf",
        "--noise: must be a finite number",
    ),
    "inpaint mask missing": ("inpaint -c {ckpt} {img} {dir}/nope.png", "does not exist"),
    "inpaint mask wrong size": (
        "inpaint -c {ckpt} {img} {bigmask}",
        "the mask must have the image's size",
    ),
    # receptive fields, traversals, walks
    "rf samples 0": ("receptive-field -c {ckpt} --samples 0", "--samples: must be in 1.."),
    "rf threshold 2": (
        "receptive-field -c {ckpt} --threshold 2",
        "--threshold: must be >= 0 and <= 1",
    ),
    "rf level 9": ("receptive-field -c {ckpt} --levels 9", "--levels: 9 is out of range"),
    "rf T nan": ("receptive-field -c {ckpt} -t nan", "--temperature: must be a finite number"),
    "rf -o is the checkpoint": ("receptive-field -c {ckpt} -o {ckpt}", "is also an input"),
    "traverse level 9": ("traverse -c {ckpt} --level 9", "--level: 9 is out of range"),
    "traverse frames 1": ("traverse -c {ckpt} --level 0 --frames 1", "--frames: must be in 2.."),
    "traverse range nan": (
        "traverse -c {ckpt} --level 0 --range nan",
        "--range: must be a finite number",
    ),
    "traverse -o is the image": (
        "traverse -c {ckpt} --level 0 --image {img} -o {img}",
        "is also an input",
    ),
    "walk steps 0": ("walk -c {ckpt} --level 0 --steps 0", "--steps: must be in 1.."),
    "walk step size 2": (
        "walk -c {ckpt} --level 0 --step-size 2",
        "--step-size: must be > 0 and <= 1",
    ),
    "walk fps 0": ("walk -c {ckpt} --level 0 --fps 0", "'--fps'"),
    "walk -n huge": ("walk -c {ckpt} --level 0 -n 100000", "'--num'"),
    # probe
    "probe no data": ("probe -c {ckpt} --data-root {dir}", "MSDS set missing or incomplete"),
    "probe alpha negative": (
        "probe -c {ckpt} --data-root {dir} --alpha -1",
        "--alpha: must be >= 0",
    ),
    "probe alpha nan": (
        "probe -c {ckpt} --data-root {dir} --alpha nan",
        "--alpha: must be a finite number",
    ),
    "probe max images 1": ("probe -c {ckpt} --data-root {dir} --max-images 1", "'--max-images'"),
    # make-msds
    "make-msds train 1e12": (
        f"make-msds msds1 --out {{dir}} --train {10**12}",
        "1 to 10,000,000 training images",
    ),
    "make-msds test negative": (
        "make-msds msds1 --out {dir} --test -1",
        "0 to 10,000,000 test images",
    ),
    "make-msds workers negative": (
        "make-msds msds1 --out {dir} --workers -1",
        "--workers: must be 0",
    ),
    "make-msds out is a file": ("make-msds msds1 --out {file}", "is a file; give a folder"),
    # train
    "train preset missing": ("train --preset {dir}/nope.yaml", "does not exist"),
    "train preset is a folder": ("train --preset {dir}", "is a folder, not a file"),
    "train preset not UTF-8": ("train --preset {preset_latin1}", "is not UTF-8 text"),
    "train preset nested deep": ("train --preset {preset_deep}", "nested too deeply"),
    "train preset is a list": ("train --preset {preset_list}", "must hold a mapping"),
    "train lr nan": ("train --preset quick --lr nan", "lr must be a finite number"),
    "train lr negative": ("train --preset quick --lr -1", "lr must be > 0"),
    "train set lr nan": ("train --preset quick --set lr=.nan", "lr must be a finite number"),
    "train seed negative": ("train --preset quick --seed -1", "seed must be >= 0"),
    "train seed 2**70": (f"train --preset quick --seed {2**70}", "seed must be >= 0"),
    "train n_hidden 1e9": ("train --preset quick --set n_hidden=1000000000", "n_hidden must be"),
    "train batch 0": ("train --preset quick --batch-size 0", "batch_size must be >= 1"),
    "train epochs 0": ("train --preset quick --epochs 0", "epochs must be >= 1"),
    "train name goes up": (
        "train --preset quick --name ../..",
        "--name: '../..' must be a plain name",
    ),
    "train name absolute": ("train --preset quick --name /tmp/elsewhere", "must be a plain name"),
    "train out is a file": ("train --preset quick --out {file}", "is a file; give a folder"),
    # eval, info, bench
    "eval missing checkpoint": ("eval -c {dir}/nope.safetensors", "does not exist"),
    "eval unknown split": ("eval -c {ckpt} --split val", "'--split'"),
    "eval batch 0": ("eval -c {ckpt} --batch-size 0", "--batch-size: must be in 1.."),
    "eval does not generate data": (
        "eval -c {ckpt} --dataset msds1 --data-root {dir}",
        "no complete msds1 set",
    ),
    "info missing": ("info {dir}/nope.safetensors", "does not exist"),
    # import / export
    "import text": ("import {text} -o m.safetensors", "not a readable checkpoint of the paper"),
    "import folder": ("import {dir} -o m.safetensors", "is a folder"),
    "import missing": ("import {dir}/500.state -o m.safetensors", "does not exist"),
    "import loop": ("import {loop} -o m.safetensors", "symbolic link that leads nowhere"),
    "import ours": ("import {ckpt} -o m.safetensors", "is a safetensors file"),
    "import over input": ("import {file} -o {file}", "is also an input"),
    "import prior": ("import {file} -o m.safetensors --prior cauchy", "'cauchy' is not one of"),
    "import no output": ("import {file}", "Missing option '--output'"),
    "export shifted first": ("export {ckpt} -o 1.state", "applies the aligned grid first"),
    "export text": ("export {text} -o 1.state", "not a readable safetensors file"),
    "export over input": ("export {ckpt} -o {ckpt}", "is also an input"),
    "export nan": ("export {nan_weights} -o 1.state", "holds NaN or infinite values"),
    "info text": ("info {text}", "not a readable safetensors file"),
    "bench batch 0": ("bench --batch-size 0", "--batch-size: must be in 1.."),
    "bench inpaint size huge": ("bench --inpaint --sizes 1048576", "--sizes: must be in"),
    "bench inpaint sizes text": (
        "bench --inpaint --sizes abc",
        "--sizes: must be comma-separated integers",
    ),
}


def _fingerprint(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path)] = "link" if path.is_symlink() else "dir"
    return out


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_harms_nothing(case, inputs, tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RGFLOW_CHECKPOINT", raising=False)
    root = inputs["ckpt"].parent
    before = _fingerprint(root)
    command, expected = BAD[case]
    code, output = run_main(*command.format(**{k: str(v) for k, v in inputs.items()}).split())
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert expected in lines[0], output
    assert _fingerprint(root) == before, "an input changed"
    assert not list(tmp_path.iterdir()), "something was written"


def test_the_decompression_bomb_is_refused_before_decoding(inputs, run_main):
    code, output = run_main("encode", "-c", inputs["ckpt"], inputs["bomb"], "--resize")
    assert code == 1 and "more than this tool reads" in output


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(inputs, tmp_path, monkeypatch, run_main):
    monkeypatch.chdir(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, output = run_main("sample", "-c", inputs["ckpt"], "-n", "2", "-o", "s.png")
    assert code == 1 and output.strip() == "error: no space left on the device"
    assert not list(tmp_path.iterdir())
