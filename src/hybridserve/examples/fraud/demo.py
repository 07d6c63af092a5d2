"""``hybridserve demo``: the fraud example end to end on the embedded default.

Scaffold a project (data included), train and register the models, promote them,
materialize the card features, score a sample of cards through the Scorer and print them.
Re-running reuses what is already there; ``--fresh`` starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from hybridserve.config import load_project
from hybridserve.errors import ModelNotFound
from hybridserve.services import Services

console = Console(highlight=False)


async def run_demo(
    directory: Path, *, fresh: bool = False, sample: int = 10, once: bool = True
) -> None:
    from hybridserve.cli.project import print_scores, score_entities
    from hybridserve.examples.fraud import scaffold
    from hybridserve.examples.fraud.train import train

    if fresh and directory.exists():
        shutil.rmtree(directory)
    project_file = directory / "hybridserve.yaml"
    if not project_file.exists():
        console.print(f"[bold]1.[/] creating the demo project and its data in {directory}/")
        scaffold(directory)
    else:
        console.print(f"[bold]1.[/] using the demo project in {directory}/")
    project = load_project(project_file)
    services = Services.open(project)
    try:
        try:
            production = services.registry.get("fraud@production")
            console.print(f"[bold]2.[/] models already registered: {production.ref} at production")
        except ModelNotFound:
            console.print("[bold]2.[/] training and registering fraud and fraud_rules ...")
            result = train(project, registry=services.registry)
            console.print(f"   {result}")
        console.print("[bold]3.[/] materializing card_profile into the online store (SQLite)")
        from hybridserve.features.materialize import materialize

        with Progress(
            TextColumn("   card_profile"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("materialize", total=None)
            mat = await materialize(
                project,
                services.features,
                "card_profile",
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        console.print(f"   {mat.entities} cards, {mat.written} written in {mat.seconds:.2f}s")
        source = project.path(project.feature_views["card_profile"].source.path)  # type: ignore[union-attr]
        cards = pq.read_table(source, columns=["card_id"])["card_id"].to_pylist()[:sample]
        console.print(f"[bold]4.[/] scoring {len(cards)} cards through the Scorer")
        scored = await score_entities(services, "fraud", cards, write=True)
        print_scores(scored, title="fraud scores (computed now from online features)")
        stored = await services.predictions.get("fraud", cards)
        console.print(
            f"   {sum(r is not None for r in stored)} predictions stored in the prediction store"
        )
    finally:
        await services.close()
    console.print(
        f"\nnext: hybridserve score fraud {cards[0] if cards else 'card_000000'} "
        f"-p {directory}   |   hybridserve registry audit -p {directory}"
    )
