"""Errors a user can cause. The CLI turns each into one line and a non-zero exit.

A message speaks of the Python API's arguments, never of command-line flags: it may name
one as a `{name}` placeholder, and `render` spells each placeholder (and the `argument`
of a `UsageError`) as the caller likes. `str()` keeps the argument names; the CLI shows
its flags instead (`{data_root}` becomes `--data-root`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _same(name: str) -> str:
    return name


class RGFlowError(Exception):
    """Base class: the message says what went wrong and what to do about it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def render(self, spell: Callable[[str], str] = _same) -> str:
        """The message with every `{name}` placeholder spelled by `spell`."""
        return _PLACEHOLDER.sub(lambda m: spell(m.group(1)), self.message)

    def __str__(self) -> str:
        return self.render()


class ConfigError(RGFlowError):
    """A preset, YAML file or override is invalid."""


class CheckpointError(RGFlowError):
    """A checkpoint is missing, corrupt, or not an rgflow checkpoint."""


class DataError(RGFlowError):
    """A dataset or input image is missing, unreadable or of the wrong shape."""


class UsageError(RGFlowError):
    """An argument value is out of range or inconsistent with the model.

    `argument` names the offending argument as the Python API spells it (`scale`,
    `temperature`), or is None when the message is about several; the CLI shows the
    matching command-line flag in its place.
    """

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument

    def render(self, spell: Callable[[str], str] = _same) -> str:
        text = super().render(spell)
        return f"{spell(self.argument)}: {text}" if self.argument else text


class TrainingError(RGFlowError):
    """Training cannot go on (e.g. persistent non-finite losses); the last good checkpoint stays."""


class RunLockedError(RGFlowError):
    """Another process is training in the same run folder."""


class Interrupted(RGFlowError):
    """The user stopped a run; the message says where its checkpoint is and how to resume."""
