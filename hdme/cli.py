"""The ``hdme`` command line. Each stage registers its own commands; none imports torch here."""

from __future__ import annotations

import sys

import typer

from hdme import __version__
from hdme.errors import HdmeError, missing_extra

app = typer.Typer(
    name="hdme",
    help="Single-image defocus map estimation (HDME-Net): synthesis, training, export, real-time runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hdme {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def _register() -> None:
    # Stage CLIs import only typer and the core at module level; heavy imports happen inside commands.
    from hdme.train.cli import register as register_train

    register_train(app)
    from hdme.runtime.cli import register as register_runtime

    register_runtime(app)
    from hdme.export.cli import register as register_export

    register_export(app)


_register()


def command():
    """The click command behind ``app``. Flags get an empty metavar: typer labels them ``<bool>``
    in help, which reads as if they took a value."""
    root = typer.main.get_command(app)
    stack = [root]
    while stack:
        cmd = stack.pop()
        stack.extend(getattr(cmd, "commands", {}).values())
        for param in [*cmd.params, cmd.get_help_option(cmd.context_class(cmd))]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return root


def main() -> None:
    from hdme.native import silence_native_logs

    silence_native_logs()
    try:
        command()(prog_name="hdme")
    except HdmeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc)
        if error is None:
            raise
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
