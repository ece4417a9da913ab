"""The ``topkrec`` command line. Heavy libraries are imported inside commands, so ``--help`` is fast.

Each area registers its commands from its own module (``cli/data.py``, ``cli/pretrain.py``, …).
Errors a user can fix (``TopkrecError``) print one line and exit with status 2; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from topkrec.cli import agent, config, data, ope, pretrain, serve, simulate
from topkrec.cli.common import STATE

app = typer.Typer(
    name="topkrec",
    help="REINFORCE recommender with the top-K off-policy correction: synth, prepare, pretrain, train, "
    "evaluate, recommend, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Commands that run data-parallel under torchrun; the others would do the same work on every rank and race
# on their outputs, so they refuse to start there.
DISTRIBUTED_COMMANDS = ("train", "pretrain")


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level (metrics lines)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Turn progress bars off."),
) -> None:
    from topkrec.device import tune_cpu_allocator

    tune_cpu_allocator()  # before anything imports torch: PyTorch reads it at its first allocation

    from topkrec.distributed import env_rank, env_world_size
    from topkrec.errors import TopkrecError

    STATE.debug = debug
    if env_world_size() > 1 and ctx.invoked_subcommand not in DISTRIBUTED_COMMANDS:
        raise TopkrecError(
            f"`topkrec {ctx.invoked_subcommand}` does not run under torchrun (WORLD_SIZE={env_world_size()}); "
            f"only {' and '.join(DISTRIBUTED_COMMANDS)} do — run it as one process"
        )
    # Under torchrun only rank 0 shows bars, INFO lines and warnings (the ranks do the same work, so the
    # others would repeat them); every rank still prints its errors.
    main_rank = env_rank() == 0
    STATE.progress = main_rank and (not no_progress) and (sys.stderr.isatty() or STATE.force_progress)
    level = logging.INFO if verbose or debug else logging.WARNING
    logging.basicConfig(
        level=level if main_rank else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command("version")
def _version() -> None:
    """Print the topkrec version."""
    from topkrec import __version__

    typer.echo(__version__)


for _area in (data, pretrain, agent, simulate, ope, serve, config):
    _area.register(app)


def main() -> None:
    from topkrec.errors import TopkrecError

    try:
        # Outside standalone mode typer turns Ctrl-C (and SIGTERM during training) into a *returned* exit
        # code, 130, instead of raising: it must become the process's status here.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code != 0:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except TopkrecError as e:
        if STATE.debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        _exit_for_click_exception(e)
        raise


def _exit_for_click_exception(e: BaseException) -> None:
    """Turn click's own exceptions into click's exits (usage line + status 2 for usage errors).

    typer ≥ 0.29 ships its own copy of click (``typer._click``) whose exception classes are not
    ``click.exceptions.*``; older typer raises click's. Both are recognised, by the classes typer exports
    (``typer.Exit``, ``typer.Abort``) and by the interface every ClickException has (``show`` +
    ``exit_code``), so this does not depend on which copy of click raised.
    """
    if isinstance(e, typer.Exit) or type(e).__name__ == "Exit":
        sys.exit(getattr(e, "exit_code", 0))
    if isinstance(e, typer.Abort) or type(e).__name__ == "Abort":
        typer.echo("aborted", err=True)
        sys.exit(1)
    show, exit_code = getattr(e, "show", None), getattr(e, "exit_code", None)
    if callable(show) and isinstance(exit_code, int) and _is_click_exception(e):
        show()
        sys.exit(exit_code)


def _is_click_exception(e: BaseException) -> bool:
    """True for click's ClickException, from the installed click or from typer's bundled copy."""
    return any(
        cls.__name__ == "ClickException" and cls.__module__.endswith(("click.exceptions", "_click.exceptions"))
        for cls in type(e).__mro__
    )
