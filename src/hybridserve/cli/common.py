"""Shared CLI plumbing: the project option, output helpers (tables, JSON, scores), running
coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hybridserve.config import Project, load_project
from hybridserve.scoring import ScoreResult
from hybridserve.urls import masked_url

# Output is mostly names, paths and messages from users and backends: printed as they are,
# never read as rich markup (``[red]``) or emoji codes (``:key:``). Styled parts are ``Text``.
console = Console(highlight=False, markup=False, emoji=False)
# Error lines are never wrapped: one problem, one line, whatever the terminal width.
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
T = TypeVar("T")

ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project file or directory (default: ./hybridserve.yaml, or $HYBRIDSERVE_PROJECT).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def print_error(message: str, label: str = "error", style: str = "bold red") -> None:
    """One line on stderr: ``label:`` in ``style``, then ``message`` as given (any backend
    URL in it masked, as in every message: the text may be a driver's)."""
    err_console.print(Text.assemble((f"{label}:", style), " ", masked_url(message)))


def project(path: Path | None) -> Project:
    return load_project(path)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def print_json(data: Any) -> None:
    typer.echo(
        orjson.dumps(
            data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        ).decode()
    )


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


def score_summary(result: ScoreResult, at: float) -> dict[str, Any]:
    """Scored records and row errors as JSON-ready dicts (ages as of ``at``)."""
    return {
        "predictions": [
            {
                "entity": r.entity,
                "score": r.score,
                "label": r.label,
                "model": r.model,
                "model_version": r.model_version,
                "source": r.source,
                "age_s": round(r.age(at), 1),
            }
            for r in result.records
        ],
        "errors": [{"entity": e.entity, "reason": e.reason} for e in result.errors],
    }


def print_scores(summary: dict[str, Any], title: str = "predictions") -> None:
    """A :func:`score_summary` as a table, then one line per entity not scored."""
    table(
        title,
        ["entity", "score", "label", "model", "source", "age"],
        [
            [
                p["entity"],
                f"{p['score']:.4f}",
                p["label"],
                f"{p['model']}/{p['model_version']}",
                p["source"],
                f"{p['age_s']:.0f}s",
            ]
            for p in summary["predictions"]
        ],
    )
    for e in summary["errors"]:
        print_error(f"{e['entity']}: {e['reason']}", label="not scored", style="yellow")
