"""Shared helpers: tiny float64 models made non-trivial (the fresh flow is the identity)."""

from __future__ import annotations

import sys

import pytest
import torch

from rgflow_cli.main import main
from rgflow_core import ModelConfig, build_model


def perturb(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so that no coupling is the identity any more."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        image_size=8, channels=1, kernel_size=2, n_layers=(2, 1, 1), n_res=2, n_mlp=1, n_hidden=8
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    """A perturbed float64 RG-Flow on 8x8 grey images, K=2 (3 levels)."""
    return perturb(build_model(tiny_config()).double())


@pytest.fixture
def run_main(monkeypatch, capsys):
    """Run the real entry point as a user would: run_main(*args) -> (exit code, output)."""

    def run(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["rgflow", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code or 0
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run
