"""Entry point of the `rgflow` command: registers the commands and maps errors.

Every error a user can cause is an `RGFlowError` (or a file-system error); `main()`
prints it as one line and exits 1. Set RGFLOW_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from rgflow_core.errors import RGFlowError

app = typer.Typer(
    name="rgflow",
    help="RG-Flow: hierarchical, explainable normalizing flows for images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so that `rgflow --help` stays fast and each command lives in its module.
    from rgflow_cli import bench, make_msds, train

    app.command("train")(train.train)
    app.command("eval")(train.eval_command)
    app.command("make-msds")(make_msds.make_msds)
    app.command("bench")(bench.bench)

    from rgflow_cli import codec, factors, mix, probe, receptive_field, sample

    app.command("sample")(sample.sample)
    app.command("encode")(codec.encode)
    app.command("decode")(codec.decode)
    app.command("mix")(mix.mix)
    app.command("receptive-field")(receptive_field.receptive_field_command)
    app.command("traverse")(factors.traverse)
    app.command("walk")(factors.walk)
    app.command("probe")(probe.probe)

    from rgflow_cli import inpaint

    app.command("inpaint")(inpaint.inpaint)


_register()


def main() -> None:
    """Run the app; every error a user can cause becomes one line on stderr."""
    try:
        code = app(standalone_mode=False)
    except RGFlowError as err:
        _fail(str(err))
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        _fail(f"{err.strerror}: {err.filename}" if err.filename else str(err))
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", code=130)
    except Exception as err:
        # Typer's usage errors (unknown option, invalid value) carry their own message and
        # exit code; shown as one line rather than a boxed panel.
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        _fail(f"{err.format_message()} (see `rgflow --help`)", code=err.exit_code)
    else:
        if isinstance(code, int) and code:
            sys.exit(code)


def _fail(message: str, code: int = 1) -> None:
    if os.environ.get("RGFLOW_DEBUG"):
        raise
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
