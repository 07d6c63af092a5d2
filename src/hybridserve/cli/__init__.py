"""The ``hybridserve`` command line.

Exit codes: 0 ok, 1 failure, 2 usage or project-file error. Human output by default,
``--json`` for machines. Errors print one clear line, never a traceback (set
``HYBRIDSERVE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from hybridserve import __version__
from hybridserve.cli.advise import advise_command
from hybridserve.cli.batch import batch_app
from hybridserve.cli.common import console, err_console, print_error
from hybridserve.cli.features import features_app
from hybridserve.cli.operations import operations_commands
from hybridserve.cli.project import project_commands
from hybridserve.cli.quality import quality_commands
from hybridserve.cli.registry import registry_app
from hybridserve.cli.review import review_app
from hybridserve.cli.rollout import rollout_app
from hybridserve.cli.stream import stream_app
from hybridserve.errors import HybridServeError

app = typer.Typer(
    name="hybridserve",
    help="Batch, online and streaming ML predictions on one registry, feature store and record.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hybridserve {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options taken before the command (typer shows the app's own help for the group)."""


app.add_typer(registry_app, name="registry")
app.add_typer(features_app, name="features")
app.add_typer(batch_app, name="batch")
app.add_typer(stream_app, name="stream")
app.add_typer(review_app, name="review")
app.add_typer(rollout_app, name="rollout")
project_commands(app)
quality_commands(app)
operations_commands(app)
app.command("advise")(advise_command)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except HybridServeError as exc:
        if os.environ.get("HYBRIDSERVE_DEBUG"):
            raise
        print_error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors (typer vendors click) and the unexpected
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        if os.environ.get("HYBRIDSERVE_DEBUG"):
            raise
        print_error(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    # Without standalone mode, click returns typer.Exit's code instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "console", "main"]
