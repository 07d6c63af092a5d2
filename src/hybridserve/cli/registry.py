"""``hybridserve registry ...``: register model versions and move aliases."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, table
from hybridserve.errors import HybridServeError, InvalidInput

registry_app = typer.Typer(help="Model versions, aliases and the audit log.", no_args_is_help=True)


def _registry(path: Path | None) -> Any:
    from hybridserve.registry import Registry

    return Registry.from_project(project(path))


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _metrics(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise InvalidInput(f"--metric: expected NAME=NUMBER, got {item!r}")
    return out


@registry_app.command()
def register(
    name: Annotated[str, typer.Argument(help="Model name, e.g. fraud.")],
    artifact: Annotated[
        Path | None, typer.Argument(help="Model file (.joblib, .pkl, .onnx).")
    ] = None,
    flavour: Annotated[
        str | None,
        typer.Option(help="sklearn, lightgbm, xgboost, onnx, callable (default: inferred)."),
    ] = None,
    callable_ref: Annotated[
        str | None, typer.Option("--callable", help="module:function for the callable flavour.")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Comma-separated feature names, when the model does not carry them."),
    ] = None,
    metric: Annotated[list[str], typer.Option(help="NAME=VALUE, repeatable.")] = [],  # noqa: B006
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    data_fingerprint: Annotated[
        str | None, typer.Option(help="Fingerprint of the training data.")
    ] = None,
    promote: Annotated[
        str | None, typer.Option(help="Point this alias at the new version.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Training (or reference) data, Parquet: stored as the version's reference "
            "profile for drift (feature bins and the model's scores on it)."
        ),
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Register a new version of a model from a file or a Python callable."""
    ref_table = None if reference is None else _reference_table(reference)
    reg = _registry(project_path)
    feature_list = features.split(",") if features else None
    if feature_list is None:
        declared = reg_project_features(project_path, name)
        feature_list = declared
    mv = reg.register(
        name,
        artifact,
        flavour=flavour,
        callable_ref=callable_ref,
        features=feature_list,
        metrics=_metrics(metric),
        description=description,
        training_data_fingerprint=data_fingerprint,
        registered_by=_actor(),
    )
    if ref_table is not None:
        _store_reference(reg, mv.ref, ref_table)
    if promote:
        reg.set_alias(name, promote, mv.version, actor=_actor())
    if json:
        print_json(mv.to_dict())
    else:
        console.print(
            Text.assemble(
                "registered ",
                (mv.ref, "bold"),
                f" ({mv.flavour}, "
                + (f"sha256 {mv.sha256[:12]})" if mv.sha256 else f"{mv.callable_ref})")
                + (f", {promote} -> {mv.version}" if promote else ""),
            )
        )


def _reference_table(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"--reference {path}: cannot read Parquet: {exc}") from None


def _store_reference(reg: Any, ref: str, table: Any) -> None:
    from hybridserve.quality.profile import profile_table

    try:
        profile = profile_table(reg.load(ref), table)
    except HybridServeError as exc:
        raise type(exc)(
            f"{ref} is registered, without a reference profile: {exc.message}; "
            f"add one with 'hybridserve registry reference {ref} FILE'"
        ) from None
    reg.set_reference(ref, profile.to_dict(), actor=_actor())


@registry_app.command("reference")
def reference_cmd(
    ref: Annotated[str, typer.Argument(help="Model version, e.g. fraud/3 or fraud@production.")],
    file: Annotated[Path, typer.Argument(help="Reference data, Parquet (the training data).")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Store (or replace) a version's reference profile, for drift."""
    table = _reference_table(file)
    reg = _registry(project_path)
    mv = reg.get(ref)
    _store_reference(reg, mv.ref, table)
    found = reg.reference(mv.name, mv.version) or {}
    if json:
        print_json(
            {"ref": mv.ref, "rows": found.get("rows"), "features": sorted(found["features"])}
        )
    else:
        console.print(f"{mv.ref}: reference profile of {found.get('rows')} rows stored")


def reg_project_features(path: Path | None, name: str) -> list[str] | None:
    spec = project(path).models.get(name)
    return None if spec is None else spec.features


@registry_app.command("list")
def list_(project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """Models with their latest version and aliases."""
    reg = _registry(project_path)
    rows = []
    for name in reg.list_models():
        versions = reg.versions(name)
        rows.append(
            {
                "name": name,
                "latest": versions[-1].version if versions else None,
                "versions": len(versions),
                "aliases": reg.aliases(name),
            }
        )
    if json:
        print_json(rows)
        return
    table(
        "models",
        ["name", "latest", "versions", "aliases"],
        [
            [
                r["name"],
                r["latest"],
                r["versions"],
                ", ".join(f"{a}={v}" for a, v in sorted(r["aliases"].items())),
            ]
            for r in rows
        ],
    )


@registry_app.command()
def show(
    ref: Annotated[str, typer.Argument(help="fraud, fraud/3 or fraud@production.")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """One model version: artifact, signature, metrics, lineage."""
    mv = _registry(project_path).get(ref)
    data = mv.to_dict()
    if json:
        print_json(data)
        return
    for key, value in data.items():
        console.print(Text.assemble((key, "bold"), f": {value}"))


@registry_app.command()
def alias(
    name: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: int,
    project_path: ProjectOpt = None,
) -> None:
    """Point ALIAS of model NAME at VERSION."""
    _registry(project_path).set_alias(name, alias_name, version, actor=_actor())
    console.print(f"{name}@{alias_name} -> {version}")


@registry_app.command("promote")
def promote_(
    name: str,
    version: int,
    to: Annotated[str, typer.Option("--alias", help="Alias to move.")] = "production",
    project_path: ProjectOpt = None,
) -> None:
    """Move an alias (default production) to VERSION; audited."""
    _registry(project_path).promote(name, version, alias=to, actor=_actor())
    console.print(f"promoted {name}/{version} to {to}")


@registry_app.command()
def rollback(
    name: str,
    to: Annotated[str, typer.Option("--alias", help="Alias to move back.")] = "production",
    project_path: ProjectOpt = None,
) -> None:
    """Move an alias back to the version it pointed at before its last move; audited."""
    reg = _registry(project_path)
    reg.rollback(name, alias=to, actor=_actor())
    console.print(f"rolled back {name}@{to} to {reg.aliases(name).get(to)}")


@registry_app.command()
def audit(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    limit: int = 50,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Who moved what, from where to where, and when."""
    entries = [e.to_dict() for e in _registry(project_path).audit(name, limit=limit)]
    if json:
        print_json(entries)
        return
    cols = ["at", "actor", "action", "model", "alias", "from_version", "to_version"]
    table("audit log", cols, [[e.get(c) for c in cols] for e in entries])
