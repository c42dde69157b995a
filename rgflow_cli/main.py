"""Entry point of the `rgflow` command: registers the commands and maps errors.

Every error a user can cause is an `RGFlowError`, an OS error, a memory error or a Typer
usage error; `main()` prints it as one `error:` line and exits non-zero. Set
RGFLOW_DEBUG=1 to see the traceback instead. A core error that names one of its
arguments (`UsageError.argument`) is shown with the command-line flag of that argument.

Command modules import only typer and light helpers at the top, so that `--help` and
`--version` answer at once; torch and the model are imported inside the commands.
"""

import functools
import os
import sys
import typing
from collections.abc import Callable
from typing import Annotated

import typer
from typer.models import ArgumentInfo, OptionInfo

from rgflow_cli import (
    bench,
    codec,
    explore,
    factors,
    fidelity,
    info,
    inpaint,
    interop,
    make_msds,
    mix,
    probe,
    receptive_field,
    sample,
    train,
)
from rgflow_core import __version__
from rgflow_core.allocator import tune_malloc
from rgflow_core.errors import Interrupted, RGFlowError
from rgflow_core.files import describe_os_error

app = typer.Typer(
    name="rgflow",
    help="RG-Flow: hierarchical, explainable normalizing flows for images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs more than 0.1 s
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rgflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """RG-Flow: hierarchical, explainable normalizing flows for images."""


def _flags(fn: Callable) -> dict[str, str]:
    """Parameter name -> how the command line spells it (`--scale`, `IMAGE`)."""
    flags = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        info = next(
            (
                m
                for m in getattr(hint, "__metadata__", ())
                if isinstance(m, OptionInfo | ArgumentInfo)
            ),
            None,
        )
        if isinstance(info, ArgumentInfo):
            flags[name] = (info.metavar or name.upper()).strip("[].")
        elif isinstance(info, OptionInfo):
            # in Annotated form typer keeps the first flag in `default`
            given = [info.default, *(info.param_decls or ())]
            decls = [d for d in given if isinstance(d, str) and d.startswith("--")]
            flags[name] = decls[0] if decls else "--" + name.replace("_", "-")
    return flags


class CommandError(Exception):
    """A core error as the command line shows it: its arguments spelled as flags."""


def _command(name: str, fn: Callable) -> None:
    """Register `fn` as a command whose errors name its flags: a core error about its
    argument `scale` is shown as being about `--scale`."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RGFlowError as err:
            flags = _flags(fn)  # only now: reading the signature costs start-up time
            raise CommandError(err.render(lambda arg: flags.get(arg, arg))) from err

    app.command(name)(run)


COMMANDS = {
    "train": train.train,
    "eval": train.evaluate,
    "sample": sample.sample,
    "encode": codec.encode,
    "decode": codec.decode,
    "mix": mix.mix,
    "mix-fidelity": fidelity.mix_fidelity,
    "receptive-field": receptive_field.receptive_field,
    "traverse": factors.traverse,
    "walk": factors.walk,
    "probe": probe.probe,
    "inpaint": inpaint.inpaint,
    "info": info.info,
    "make-msds": make_msds.make_msds,
    "import": interop.import_model,
    "export": interop.export_model,
    "bench": bench.bench,
    "explore": explore.explore,
}
for _name, _fn in COMMANDS.items():
    _command(_name, _fn)


def _run(argv: list[str]) -> object:
    """Run the app on the command-line arguments.

    A known command named first goes straight to that command. The root has nothing of its
    own to parse then (only --version and the completion options), but Typer 0.29 would
    coerce those options through pydantic first, an import that made every `CMD --help`
    0.2 s slower.
    """
    argv = argv or ["--help"]  # `rgflow` alone shows what it can do
    if argv[0] in COMMANDS:
        command = typer.main.get_command(app).commands[argv[0]]
        return command.main(argv[1:], prog_name=f"rgflow {argv[0]}", standalone_mode=False)
    return app(argv, prog_name="rgflow", standalone_mode=False)


def main() -> None:
    """Run the app; every error a user can cause becomes one line on stderr."""
    tune_malloc()
    try:
        code = _run(sys.argv[1:])
    except (CommandError, RGFlowError) as err:
        if isinstance(err.__cause__ or err, Interrupted):  # a stop the user asked for
            _fail(str(err), code=130, prefix="")
        _fail(str(err))
    except OSError as err:
        _fail(describe_os_error(err))
    except MemoryError:
        _fail("out of memory; use a smaller batch size, model or image count")
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", code=130)
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch's, for a GPU (torch not imported here)
            _fail("out of GPU memory; use a smaller --batch-size, fewer images, or another device")
        # Typer's usage errors (unknown option, invalid value) carry their own message and
        # exit code; shown as one line rather than a boxed panel.
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        _fail(f"{err.format_message()} (see `rgflow --help`)", code=err.exit_code)
    else:
        if code == 130:  # Typer turns a KeyboardInterrupt into this exit code, silently
            _fail("interrupted", code=130)
        if isinstance(code, int) and code:
            sys.exit(code)


def _fail(message: str, code: int = 1, prefix: str = "error: ") -> None:
    if os.environ.get("RGFLOW_DEBUG") and sys.exc_info()[0] is not None:
        raise  # noqa: PLE0704 - re-raise the exception being handled, with its traceback
    typer.echo(prefix + " ".join(message.split()), err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
