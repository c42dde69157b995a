"""Progress bars and status lines on stderr (stdout stays clean for --json), built in one
place. rich is imported when a bar is made, not when a command module is imported."""

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


@functools.cache
def stderr_console() -> "Console":
    """The console that bars and messages are drawn on."""
    from rich.console import Console

    return Console(stderr=True)


def __getattr__(name: str) -> Any:
    if name == "console":  # `from rgflow_cli.progress import console`, resolved lazily
        return stderr_console()
    raise AttributeError(name)


def new_bar(*extra: Any, quiet: bool = False, transient: bool = True) -> "Progress":
    """A rich progress bar: description, bar, done/total, `extra` columns, times."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = stderr_console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra)
    return Progress(
        *columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,  # no bar in logs and pipes
        transient=transient,
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Show a bar while the block runs; yields `advance(n)`."""
    with new_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
