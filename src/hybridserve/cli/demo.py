"""``hybridserve demo``: the fraud example end to end on the embedded default.

1. scaffold a project (data included), train and register the models, promote them;
2. materialize the card features into the online store;
3. run the nightly batch job over every card and publish it;
4. replay a burst of card transactions through the stream consumer (fresher windows);
5. start the server and ask it about cards whose answers come from each source: a batch
   prediction, the L1 cache, a stream prediction, a fresh computation (also on the
   ``fraud_windows`` route, from the windows the stream just updated), and fallbacks while
   the feature store is down;
6. keep serving until Ctrl-C (``--once`` exits).

Re-running reuses what is there; ``--fresh`` starts over.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from hybridserve.cli.common import print_scores, score_summary
from hybridserve.config import Project, load_project
from hybridserve.errors import ModelNotFound
from hybridserve.records import now
from hybridserve.registry import Registry
from hybridserve.services import Services

# Wide enough for the answers table even when output goes to a pipe or a log. Text (paths,
# answers) is printed as it is, never read as markup or emoji codes; styles are ``Text``.
console = Console(
    highlight=False,
    markup=False,
    emoji=False,
    width=max(120, shutil.get_terminal_size().columns),
)


def _step(number: int, text: str) -> None:
    console.print(Text.assemble((f"{number}.", "bold"), " ", text))


async def run_demo(
    directory: Path,
    *,
    fresh: bool = False,
    sample: int = 10,
    once: bool = True,
    port: int = 8000,
    events: int = 2000,
) -> None:
    project = await prepare(directory, fresh=fresh)
    cards = _cards(project, sample)
    await score_locally(project, cards)
    await batch_run(project)
    streamed = await stream_replay(project, events)
    await serve_and_ask(project, cards, streamed, port=port, once=once)


async def prepare(directory: Path, *, fresh: bool) -> Project:
    """Steps 1-2: project, data, models, online features."""
    from hybridserve.examples.fraud import scaffold
    from hybridserve.features.materialize import materialize

    if fresh and directory.exists():
        shutil.rmtree(directory)
    project_file = directory / "hybridserve.yaml"
    if not project_file.exists():
        _step(1, f"creating the demo project and its data in {directory}/")
        scaffold(directory)
    else:
        _step(1, f"using the demo project in {directory}/")
    project = load_project(project_file)
    services = Services.open(project)
    try:
        register_models(project, services.registry, indent="   ")
        _step(2, "materializing card_profile into the online store (SQLite)")
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
    finally:
        await services.close()
    return project


def register_models(project: Project, registry: Registry, *, indent: str = "") -> None:
    """Train, register and promote the example's models, unless each is already at
    production (the demo's step 1, and what ``hybridserve init`` does after scaffolding)."""
    from hybridserve.examples.fraud.train import MODEL, RULES_MODEL, WINDOWS_MODEL, train

    try:
        refs = [registry.get(f"{m}@production").ref for m in (MODEL, RULES_MODEL, WINDOWS_MODEL)]
        console.print(f"{indent}models already registered: {', '.join(refs)} at production")
    except ModelNotFound:
        console.print(f"{indent}training and registering fraud, fraud_rules and fraud_windows ...")
        console.print(f"{indent}{train(project, registry=registry)}")


def _cards(project: Project, sample: int) -> list[str]:
    source = project.view("card_profile").source
    assert source is not None
    ids: list[str] = pq.read_table(project.path(source.path), columns=["card_id"])[
        "card_id"
    ].to_pylist()
    return ids[:sample]


async def score_locally(project: Project, cards: list[str]) -> None:
    """The Scorer on its own, without a server (what ``hybridserve score`` does)."""
    services = Services.open(project)
    try:
        console.print("   scoring 3 cards locally through the Scorer")
        at = now()
        scored = await services.score_entities("fraud", cards[:3], at=at)
        print_scores(
            score_summary(scored, at), title="   local scores (computed now from online features)"
        )
    finally:
        await services.close()


async def batch_run(project: Project) -> None:
    """Step 3: the nightly batch job, published atomically."""
    from hybridserve.batch.runner import run_job

    _step(3, "running batch job fraud_daily over every card")
    # run_job drives its own event loop and process pool: keep it off this loop.
    manifest = await asyncio.to_thread(run_job, project, "fraud_daily")
    console.print(
        f"   run {manifest.run_id}: {manifest.total('scored')} cards scored with "
        f"{manifest.model_ref}, {manifest.total('rejected')} rejected, {manifest.status}"
    )


async def stream_replay(project: Project, events: int) -> list[str]:
    """Step 4: transactions through the stream consumer; returns cards it scored."""
    from hybridserve.examples.fraud.transactions import replay_demo

    _step(4, f"replaying {events} card transactions through the stream consumer")
    result = await replay_demo(project, events)
    t = result.totals
    console.print(
        f"   {t.read} events read, {t.scored} scored, {t.duplicates} duplicates, "
        f"{t.late} late, {t.dead} dead-lettered in {result.seconds:.2f}s"
    )
    return result.entities


async def serve_and_ask(
    project: Project, cards: list[str], streamed: list[str], *, port: int, once: bool
) -> None:
    """Steps 5-6: a real server, and questions whose answers come from each source."""
    from hybridserve.server.app import create_app
    from hybridserve.storage.faulty import FaultyStore

    app = create_app(project, access_log=False)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises the start-up error
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{bound}"
    _step(5, f"server on {url}; asking it about cards")
    # Cards the stream did not score (``streamed`` is only a sample of those it did): their
    # stored answer is the batch run's.
    sample = [c for c in cards if c not in set(streamed)][:200]
    own = await app.state.services.predictions.get("fraud", sample)
    plain = [c for c, r in zip(sample, own, strict=True) if r is None] or sample
    features = app.state.services.features
    outage = FaultyStore(features.kv)
    asks: list[tuple[str, dict[str, Any]]] = [
        ("batch run's prediction", {"entity": plain[0]}),
        ("same card again", {"entity": plain[0]}),
        ("stream consumer's", {"entity": streamed[0]}),
        ("compute now", {"entity": plain[1], "mode": "compute"}),
    ]
    table = Table(title="answers", title_justify="left")
    for column in ("question", "entity", "score", "source", "model", "age", "degraded"):
        table.add_column(column)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for title, body in asks:
            _row(table, title, await client.post("/v1/predict/fraud", json=body))
        # The same streamed card on the route that also reads the stream's windows.
        _row(
            table,
            "fraud_windows route, compute",
            await client.post(
                "/v1/predict/fraud_windows", json={"entity": streamed[0], "mode": "compute"}
            ),
        )
        features.kv = outage
        outage.down = True
        _row(
            table,
            "features down, compute",
            await client.post("/v1/predict/fraud", json={"entity": plain[2], "mode": "compute"}),
        )
        _row(
            table,
            "features down, new card",
            await client.post(
                "/v1/predict/fraud", json={"entity": "card_unknown", "mode": "compute"}
            ),
        )
        outage.down = False
        features.kv = outage.inner
    console.print(table)
    console.print(
        f"   dashboard: {url}/dashboard   metrics: {url}/metrics   API docs: {url}/docs   "
        f"Open Inference Protocol: {url}/v2/models/fraud"
    )
    if once:
        server.should_exit = True
    else:
        _step(
            6,
            "serving until Ctrl-C; try:\n"
            f'   curl -s {url}/v1/predict/fraud -d \'{{"entity": "{plain[0]}"}}\'',
        )
    await serving


def _row(table: Table, title: str, response: httpx.Response) -> None:
    body = response.json()
    if response.status_code != 200:
        table.add_row(title, "", "", f"HTTP {response.status_code}", "", "", "")
        return
    p = body["predictions"][0]
    model = f"{p['model']}/{p['model_version']}" if p["model"] else "-"
    age = "-" if p["age_s"] is None else f"{p['age_s']:.0f}s"
    table.add_row(
        title,
        p["entity"],
        f"{p['score']:.4f}",
        p["source"],
        model,
        age,
        "yes" if p["degraded"] else "no",
    )
