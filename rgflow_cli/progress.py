"""Progress bars on stderr (stdout stays clean for --json), built in one place."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def new_bar(*extra: TextColumn, quiet: bool = False, transient: bool = True) -> Progress:
    """A rich progress bar: description, bar, done/total, `extra` columns, times."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra)
    return Progress(
        *columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=transient,
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Show a bar while the block runs; yields `advance(n)`."""
    with new_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
