"""Golden files for `rgflow import`: small models made and run by the paper's own code.

The paper's public code (https://github.com/hongyehu/RG-Flow, MIT) is imported from the
folder given with `--ref-code`; nothing of it is copied into rgflow. For each case below
this script builds the model exactly as its `main.py` does (`build_mera` from its `args`),
in float64, sets every parameter to random values (a fresh flow is the identity, which would
make any comparison vacuous), takes one AdamW step so that the optimizer has state, and
saves it as `main.py` does: `torch.save({'flow': ..., 'optimizer': ...}, '<epoch>.state')`
(multi-GPU runs through its `data_parallel_wrap`, which prefixes `module.net.`). Beside each
file a JSON records what the paper's code computes on fixed inputs: the logit transform,
log-densities, latents and log-determinants of `forward`, and `inverse` of fixed latents.

Two architectures are recorded as keys and shapes only: the paper's CelebA model (100 M
parameters, built on the meta device: nothing is allocated) and designs rgflow refuses.

    python benchmarks/reference_fixtures.py --ref-code /path/to/RG-Flow/code \
        --out tests/data/reference
    python benchmarks/reference_fixtures.py --ref-code ... --verify-export   # the way back

The paper's code parses its command line at import and needs a few packages only its data
loaders and plots use (h5py, scikit-image); this script gives it an empty command line and
empty stand-ins for those, in this process only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import torch

# (name, epoch, paper's arguments, multi-GPU prefix, optimizer saved)
CASES = [
    (
        "laplace_k2",
        12,
        dict(nchannels=1, L=8, kernel_size=2, prior="laplace", nlayers="2,1,1", nresblocks="2",
             nmlp="1", nhidden="4"),
        False,
        True,
    ),
    (
        "gaussian_rgb_multigpu",
        3,
        dict(nchannels=3, L=8, kernel_size=2, prior="gaussian", nlayers="1", nresblocks="1",
             nmlp="2", nhidden="3"),
        True,
        True,
    ),
    (
        "laplace_k4_l16_no_optimizer",
        500,
        dict(nchannels=1, L=16, kernel_size=4, prior="laplace", nlayers="1,2,1", nresblocks="1",
             nmlp="1", nhidden="3"),
        False,
        False,
    ),
]  # fmt: skip

SHAPES_ONLY = {
    # the paper's defaults: CelebA 32x32 (args.py), as `rgflow_core`'s celeba32 preset
    "celeba32": dict(nchannels=3, L=32, kernel_size=4, prior="laplace", nlayers="8,6,4,2",
                     nresblocks="4", nmlp="2", nhidden="512"),
    # designs rgflow cannot represent
    "per_level_nhidden": dict(nchannels=1, L=8, kernel_size=2, prior="laplace", nlayers="1",
                              nresblocks="1", nmlp="1", nhidden="4,8,4"),
    "per_level_nresblocks": dict(nchannels=1, L=8, kernel_size=2, prior="laplace", nlayers="1",
                                 nresblocks="1,2,1", nmlp="1", nhidden="4"),
    "per_level_nmlp": dict(nchannels=1, L=8, kernel_size=2, prior="laplace", nlayers="1",
                           nresblocks="1", nmlp="2,1,1", nhidden="4"),
    "ar_subnet": dict(nchannels=1, L=8, kernel_size=2, prior="laplace", nlayers="1",
                      nresblocks="1", nmlp="1", nhidden="4", subnet="ar"),
}  # fmt: skip

BATCH = 2


def import_paper_code(ref_code: Path, dtype: str = "float64"):
    """The paper's `args`, `main` and `utils` modules, imported from `ref_code`; its
    `args` sets torch's default dtype to `dtype` at import."""
    for name in ("h5py", "skimage", "skimage.io", "skimage.transform"):
        sys.modules.setdefault(name, types.ModuleType(name))  # used by its loaders and plots only
    sys.path.insert(0, str(ref_code))
    argv, sys.argv = sys.argv, [str(ref_code / "main.py"), "--dtype", dtype, "-o", ""]
    try:
        import args as ref_args  # parses sys.argv and sets the default dtype, at import
        import main as ref_main
        import utils as ref_utils
    finally:
        sys.argv = argv
    return ref_args, ref_main, ref_utils


def configure(ref_args, values: dict) -> None:
    """Set the paper's global `args` as its command line would for these values."""
    a = ref_args.args
    a.subnet = "rnvp"
    for key, value in values.items():
        setattr(a, key, value)
    a.depth = int(math.log2(a.L / a.kernel_size) + 1) * 2
    a.nlayers_list = ref_args.str_to_int_list(a.nlayers, a.depth)
    a.nresblocks_list = ref_args.str_to_int_list(a.nresblocks, a.depth)
    a.nmlp_list = ref_args.str_to_int_list(a.nmlp, a.depth)
    a.nhidden_list = ref_args.str_to_int_list(a.nhidden, a.depth)


def randomise(flow: torch.nn.Module, gen: torch.Generator) -> None:
    """Random values of a sensible size for every parameter (all of them change)."""
    with torch.no_grad():
        for name, p in flow.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("weight_v"):
                p.copy_(noise * 1.2 / math.sqrt(p.shape[1]))
            elif name.endswith("weight_g"):
                p.copy_(0.6 + 0.3 * noise.abs())
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif ".res_blocks." in name:  # Swish slope
                p.copy_(1.0 + 0.3 * noise)
            else:  # the final Scale: the gains of s and t
                p.copy_(0.4 * noise)


def flat(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": t.detach().flatten().tolist()}


def make_case(refs, out: Path, name: str, epoch: int, values: dict, prefix: bool, opt: bool):
    ref_args, ref_main, ref_utils = refs
    configure(ref_args, values)
    a = ref_args.args
    torch.manual_seed(0)
    flow = ref_main.build_mera()
    saved = ref_utils.data_parallel_wrap(flow) if prefix else flow
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    randomise(flow, gen)
    shape = (BATCH, a.nchannels, a.L, a.L)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y, ldj_logit = ref_utils.logit_transform(x.clone(), dequant=False)
    flow.log_prob(y).sum().neg().backward()  # one step as main.py takes it: optimizer state
    optimizer.step()
    optimizer.zero_grad()
    randomise(flow, gen)
    flow.train(False)
    with torch.no_grad():
        z, ldj = flow.forward(y)
        log_prob = flow.log_prob(y)
        z0 = flow.prior.sample(BATCH)
        x0, inv_ldj = flow.inverse(z0)
        wrong = flow.log_prob(y.flip(-1))  # unused by the tests' maths; a sanity figure
    folder = out / name / "out_save"  # as main.py names it: <out>_save/<epoch>.state
    folder.mkdir(parents=True, exist_ok=True)
    state = {"flow": saved.state_dict()}
    if opt:
        state["optimizer"] = optimizer.state_dict()
    path = folder / f"{epoch}.state"
    torch.save(state, path)
    golden = {
        "file": str(path.relative_to(out)),
        "paper_args": {k: v for k, v in values.items()},
        "multi_gpu_prefix": prefix,
        "optimizer": opt,
        "epoch": epoch,
        "logit": {"x": flat(x), "y": flat(y), "ldj": flat(ldj_logit)},
        "forward": {"z": flat(z), "ldj": flat(ldj), "log_prob": flat(log_prob)},
        "inverse": {"z": flat(z0), "x": flat(x0), "ldj": flat(inv_ldj)},
        "nparams": sum(p.numel() for p in params),
    }
    (out / f"{name}.json").write_text(json.dumps(golden, indent=0) + "\n")
    print(f"{name}: {path.stat().st_size:,} bytes, log_prob {log_prob.tolist()}, "
          f"flipped {wrong.tolist()}")  # fmt: skip


def shapes_case(refs, values: dict) -> dict:
    ref_args, ref_main, _ = refs
    configure(ref_args, values)
    a = ref_args.args
    a.subnet = values.get("subnet", "rnvp")
    prior_scale = float(ref_main.get_prior().scale)
    device, a.device = a.device, torch.device("meta")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            flow = ref_main.build_mera()
    finally:
        a.device = device
    state = flow.state_dict()
    return {
        "paper_args": values,
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "prior_scale": prior_scale,
        "nparams": sum(p.numel() for p in flow.parameters() if p.requires_grad),
    }


def verify_export(refs, out: Path) -> None:
    """rgflow's export of each imported case, loaded strictly into a model the paper's code
    builds, computes the recorded log-densities (needs rgflow_core importable)."""
    import tempfile

    from rgflow_core.reference import export_reference, import_reference

    ref_args, ref_main, _ = refs
    for name, _, values, _, _ in CASES:
        golden = json.loads((out / f"{name}.json").read_text())
        model, _ = import_reference(out / golden["file"])
        with tempfile.TemporaryDirectory() as tmp:
            path = export_reference(model, Path(tmp) / "1.state")
            state = torch.load(path, weights_only=True)
        configure(ref_args, values)
        flow = ref_main.build_mera()
        flow.load_state_dict(state["flow"], strict=True)
        flow.train(False)
        y = torch.tensor(golden["logit"]["y"]["values"]).view(golden["logit"]["y"]["shape"])
        want = torch.tensor(golden["forward"]["log_prob"]["values"])
        with torch.no_grad():
            diff = float((flow.log_prob(y) - want).abs().max())
        print(f"{name}: exported, loaded strictly by the paper's code, max |d log p| {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref-code", type=Path, required=True, help="the paper's code folder")
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference"))
    parser.add_argument(
        "--verify-export",
        action="store_true",
        help="only check that rgflow's exports of the existing golden files run in the "
        "paper's code (rgflow_core must be importable)",
    )
    opts = parser.parse_args()
    refs = import_paper_code(opts.ref_code.resolve())
    if opts.verify_export:
        verify_export(refs, opts.out)
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    for name, epoch, values, prefix, opt in CASES:
        make_case(refs, opts.out, name, epoch, values, prefix, opt)
    shapes = {name: shapes_case(refs, values) for name, values in SHAPES_ONLY.items()}
    (opts.out / "shapes.json").write_text(json.dumps(shapes, indent=0) + "\n")
    print(f"celeba32: {shapes['celeba32']['nparams']:,} parameters")


if __name__ == "__main__":
    main()
