"""The C allocator settings the `rgflow` command applies (rgflow_core.allocator)."""

from __future__ import annotations

import os
import sys

import pytest

from rgflow_core.allocator import tune_malloc


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith(
            "glibc"
        )
    except (ValueError, OSError):
        return False


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MALLOC_") or key in ("GLIBC_TUNABLES", "RGFLOW_TUNE_MALLOC"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt only")
def test_applied_on_glibc(clean_env):
    assert tune_malloc()


@pytest.mark.parametrize(
    "key,value",
    [
        ("RGFLOW_TUNE_MALLOC", "0"),
        ("MALLOC_ARENA_MAX", "2"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
    ],
)
def test_left_alone_when_the_user_chose(clean_env, key, value):
    clean_env.setenv(key, value)
    assert not tune_malloc()


def test_the_command_tunes_the_allocator_before_its_work(run_main, monkeypatch):
    import rgflow_cli.main

    calls = []
    monkeypatch.setattr(rgflow_cli.main, "tune_malloc", lambda: calls.append(1) or True)
    code, _ = run_main("--version")
    assert code == 0 and calls == [1]
