"""The README is executable: every command of its ```bash blocks runs, in order, in one
temporary folder, and must exit 0 and leave the files it says it writes.

The convention the README's shell blocks follow:

* A ```python block is run as a script with the test's interpreter, in its place.
* A bash block is read line by line. A line ending in ``\\`` continues on the next. A line
  that starts with ``#`` is prose for the reader, except the markers below. Every other
  line is a command line; ``&&`` splits it into steps, run in order as bash runs them.
* ``cmd ...  # readme-test: ARGS`` (a trailing comment): the test appends ARGS to the last
  step of the line, so that a command which trains for minutes runs a shortened setting
  (e.g. ``--epochs 1 --set train_size=256 --set test_size=64``). The reader's copy of the
  command is unaffected (bash ignores the comment).
* ``cmd ...  # readme-test: serve [ARGS]``: the command serves a page until Ctrl-C
  (`rgflow explore`). The test starts it with ARGS and ``--port`` of a free port, waits
  until the page answers, then sends SIGINT and expects a clean exit (0 or 130).
* ``# writes: PATH ...`` (on its own line after a command line, or as its trailing
  comment): the files that command line writes, relative to the folder it runs in; shell
  wildcards allowed. Each must exist (and not be empty) after it ran.
* Each step must be one the test knows how to take: it starts with a program of
  `PROGRAMS` (run with bash; `VAR=value` words may come before it), or it is one of
  `STAND_INS`, the steps that set up a virtual environment, which the test does not
  repeat (it must not install packages) but checks and replaces with wrappers around the
  interpreter it runs in. Any other step fails the test: no command is skipped silently.

The folder holds links to the checkout's files (so `pip install -e .`, `.ci/...` and
`tests/` mean what they say) and receives what the commands write (`runs/`, `data/`,
`.venv/`). `.venv/bin/rgflow`, `.venv/bin/python` (and bare `rgflow`, `python` on the
PATH) run this checkout with the test's interpreter, one thread each; rgflow's cache
(`RGFLOW_CACHE`) is inside the folder, and `BROWSER` opens nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
# programs a README step may start with (relative paths are under the run folder)
PROGRAMS = frozenset(
    [".venv/bin/rgflow", ".venv/bin/python", "rgflow", "python", "python3", "torchrun", "bash"]
    + ["ls", "cat", "mkdir", "cp", "mv", "rm", "test", "echo", "cd", "export"]
)
TIMEOUT = 600  # seconds per command line
SERVE_TIMEOUT = 300  # seconds a served page may take to answer (it may generate images first)


@dataclass
class CommandLine:
    """One command line of a block, as the test will run it."""

    steps: list[str]
    extra: str = ""  # appended to the last step (`# readme-test:`)
    writes: list[str] = field(default_factory=list)  # `# writes:`
    line: int = 0  # in README.md, for messages
    python: str = ""  # a ```python block: run as a script, in its place among the commands


def _split_comment(line: str) -> tuple[str, str]:
    """(command, trailing comment) of a shell line: the first `#` outside quotes that
    starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def _split_steps(command: str) -> list[str]:
    """The `&&`-separated steps of a command line (outside quotes)."""
    steps, quote, start = [], None, 0
    i = 0
    while i < len(command):
        ch = command[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif command.startswith("&&", i):
            steps.append(command[start:i].strip())
            start = i + 2
            i += 1
        i += 1
    steps.append(command[start:].strip())
    return [s for s in steps if s]


def parse_blocks(text: str) -> list[CommandLine]:
    """Every command line of every ```bash block, and every ```python block, of a
    markdown text, in order."""
    lines: list[CommandLine] = []
    for block in BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        raw = block.group(1).splitlines()
        joined: list[tuple[int, str]] = []
        pending, at = "", 0
        for n, line in enumerate(raw):
            if not pending:
                at = first + n
            part = line.strip() if pending else line
            if part.rstrip().endswith("\\"):
                pending += part.rstrip()[:-1].rstrip() + " "
                continue
            joined.append((at, pending + part))
            pending = ""
        assert not pending, f"README.md:{at}: a command line ends with a backslash"
        for number, line in joined:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                note = stripped[1:].strip()
                if note.startswith("writes:"):
                    assert lines, f"README.md:{number}: '# writes:' before any command"
                    lines[-1].writes += note[len("writes:") :].split()
                elif note.startswith("readme-test:"):
                    raise AssertionError(
                        f"README.md:{number}: '# readme-test:' belongs at the end of a command"
                    )
                continue
            command, comment = _split_comment(stripped)
            entry = CommandLine(_split_steps(command), line=number)
            for part in re.split(r"\s+#\s*", comment) if comment else []:
                if part.startswith("readme-test:"):
                    entry.extra = part[len("readme-test:") :].strip()
                elif part.startswith("writes:"):
                    entry.writes += part[len("writes:") :].split()
            lines.append(entry)
    for block in PYTHON_BLOCK.finditer(text):
        number = text.count("\n", 0, block.start(1))  # the line of the opening fence
        lines.append(CommandLine([], line=number, python=block.group(1)))
    lines.sort(key=lambda entry: entry.line)
    return lines


# --- the steps the test stands in for ---------------------------------------------------------


def _make_venv(folder: Path, step: str) -> None:
    """`python3 -m venv .venv`: wrappers in .venv/bin/ around this interpreter instead."""
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, run in (("python", ""), ("rgflow", " -m rgflow_cli")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}"{run} "$@"\n')
        script.chmod(0o755)


def _pip_install(folder: Path, step: str) -> None:
    """`.venv/bin/pip install [-c FILE] -e ".[extras]"`: nothing is installed (the test's
    interpreter runs the checkout); the files and extras it names must exist."""
    assert (folder / ".venv/bin/python").is_file(), f"{step!r} before the venv is made"
    words = shlex.split(step)[2:]
    extras = _extras()
    for flag, value in zip(words, words[1:]):
        if flag in ("-c", "-r"):
            assert (folder / value).is_file(), f"{step!r}: {value} does not exist"
        if flag == "-e":
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", value)
            assert match, f"{step!r}: expected -e . or -e '.[extras]'"
            named = set((match.group(1) or "").split(",")) - {""}
            assert named <= extras, f"{step!r}: no extras {named - extras} in pyproject.toml"


def _extras() -> set[str]:
    """The extras of pyproject.toml (its [project.optional-dependencies] keys)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


STAND_INS = [
    (re.compile(r"python3? -m venv \.venv"), _make_venv),
    (re.compile(r"\.venv/bin/pip install .*"), _pip_install),
]


# --- running -------------------------------------------------------------------------------


def _run_folder(tmp_path: Path) -> Path:
    """A folder that looks like the checkout (links to its files) and takes the outputs."""
    folder = tmp_path / "readme"
    folder.mkdir()
    keep = {".git", ".venv", "runs", "data", ".pytest_cache", ".ruff_cache"}
    for entry in ROOT.iterdir():
        if entry.name not in keep and not entry.name.startswith(".ci-"):
            (folder / entry.name).symlink_to(entry)
    return folder


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RGFLOW_CHECKPOINT", "VIRTUAL_ENV")}
    bin_dir = folder / ".venv" / "bin"
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT),
        OMP_NUM_THREADS="1",
        RGFLOW_CACHE=str(folder / ".rgflow-cache"),
        BROWSER="true",  # `--open` asks the browser named here: a command that does nothing
    )
    return env


def _serve(step: str, folder: Path, where: str) -> None:
    """Run a command that serves a page until Ctrl-C: it must answer, then stop cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["bash", "-c", f"exec {step} --port {port}"], cwd=folder, env=_environment(folder),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            assert server.poll() is None, f"{where} exited {server.returncode} while serving"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"<html" in page.read().lower()
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{where} did not answer on port {port}"
                time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
        assert server.returncode in (0, 130), f"{where} stopped with {server.returncode}:\n{output}"
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def run_line(entry: CommandLine, folder: Path) -> None:
    """Take every step of a command line, then check the files it says it writes."""
    if entry.python:
        done = subprocess.run(
            [sys.executable, "-c", entry.python], cwd=folder, env=_environment(folder),
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"README.md:{entry.line}: the python block failed:\n{done.stdout}{done.stderr}"
        )
        return
    extra, serve = entry.extra, entry.extra.split()[:1] == ["serve"]
    if serve:
        extra = extra[len("serve") :].strip()
    for i, step in enumerate(entry.steps):
        last = i == len(entry.steps) - 1
        if last and extra:
            step = f"{step} {extra}"
        where = f"README.md:{entry.line}: {step!r}"
        stand_in = next((fn for pattern, fn in STAND_INS if pattern.fullmatch(step)), None)
        if stand_in is not None:
            stand_in(folder, step)
            continue
        words = shlex.split(step)
        # leading VAR=value words set the environment of the program that follows
        program = next((w for w in words if not re.fullmatch(r"[A-Za-z_]\w*=\S*", w)), "")
        if program not in PROGRAMS:
            raise AssertionError(
                f"{where}: the test does not know how to run {program!r}; add it to "
                "PROGRAMS or STAND_INS in tests/test_readme.py"
            )
        if serve and last:
            _serve(step, folder, where)
            continue
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", step], cwd=folder, env=_environment(folder),
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"{where} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    for pattern in entry.writes:
        found = [p for p in folder.glob(pattern) if p.is_file() and p.stat().st_size > 0]
        assert found, f"README.md:{entry.line}: wrote no {pattern}"


def test_the_readme_shell_blocks_run_in_order(tmp_path):
    lines = parse_blocks(README.read_text(encoding="utf-8"))
    assert lines, "README.md has no ```bash block"
    folder = _run_folder(tmp_path)
    for entry in lines:
        run_line(entry, folder)


# --- the convention itself ------------------------------------------------------------------


def test_markers_continuations_and_steps_are_read():
    text = (
        "text\n```bash\n# prose\npython3 -m venv .venv && .venv/bin/rgflow train \\\n"
        '    --preset "a # b"  # readme-test: --epochs 1\n# writes: runs/x/*.png out.txt\n'
        "rgflow info  # writes: info.json\n```\n```python\nprint(1)\n```\n"
    )
    first, second, script = parse_blocks(text)
    assert (script.steps, script.python, script.line) == ([], "print(1)\n", 9)
    assert first.steps == ["python3 -m venv .venv", '.venv/bin/rgflow train --preset "a # b"']
    assert (first.extra, first.writes, first.line) == ("--epochs 1", ["runs/x/*.png", "out.txt"], 4)
    assert (second.steps, second.writes, second.line) == (["rgflow info"], ["info.json"], 7)


def test_an_unknown_command_fails_rather_than_being_skipped(tmp_path):
    with pytest.raises(AssertionError, match="does not know how to run 'curl'"):
        run_line(CommandLine(["curl https://example.org"]), tmp_path)


def test_a_failing_command_or_a_missing_file_fails(tmp_path):
    with pytest.raises(AssertionError, match="exited 1"):
        run_line(CommandLine(["test 1 = 2"]), tmp_path)
    with pytest.raises(AssertionError, match="wrote no out.txt"):
        run_line(CommandLine(["echo hi"], writes=["out.txt"]), tmp_path)
    with pytest.raises(AssertionError, match="no extras"):
        _make_venv(tmp_path, "python3 -m venv .venv")
        _pip_install(tmp_path, '.venv/bin/pip install -e ".[nosuch]"')
