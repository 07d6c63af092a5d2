"""``hybridserve advise ROUTE``: which serving mode meets the route's freshness at least cost.

The numbers come from what the project measured, each shown with where it came from:

- batch rows/s and core-seconds per row: the route's newest completed batch run (its
  manifest: rows scored, the sum of its chunks' seconds, its wall time), and the interval of
  its job's cron schedule (a day when it has none);
- online core-seconds per computed answer, per stored answer, and the share of answers served
  from the store: a server's counters (``--metrics URL-or-file``: model seconds per row plus
  feature-read seconds per computed answer; cache and store seconds per stored answer), or
  else a sample of entities scored and looked up here, one at a time, on the CPU clock;
- the request rate (``--rate``), the entity count (the batch run's rows) and the active
  entities (``--active``, default a fifth) where nothing measured says.

The arithmetic is :func:`hybridserve.quality.advise.advise`; ``--what-if rate=500`` (also
``entities=``, ``active=``, ``hit_rate=``) prices other traffic.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, run, table
from hybridserve.config import Project
from hybridserve.errors import InvalidInput
from hybridserve.quality.advise import DAY, Advice, Inputs, advise

DEFAULT_RATE = 10.0
DEFAULT_HIT_RATE = 0.8
"""Without server counters: the share of requests for the active fifth of entities (the
usual skew of traffic: a few entities get most requests)."""
SAMPLE = 200


def _batch(proj: Project, route: str) -> tuple[dict[str, float], dict[str, str]]:
    from hybridserve.batch.manifest import runs
    from hybridserve.batch.schedule import next_fire

    jobs = [name for name, job in proj.batch_jobs.items() if job.route == route]
    done = [m for job in jobs for m in runs(proj, job) if m.status == "completed"]
    if not done:
        raise InvalidInput(
            f"route {route!r} has no completed batch run to measure batch costs from: "
            + (f"run 'hybridserve batch run {jobs[0]}' first" if jobs else "it has no batch job")
        )
    m = done[0]
    scored = m.total("scored")
    core = sum(c.seconds for c in m.chunks.values())
    wall = (m.finished_at or m.started_at) - m.started_at
    if scored <= 0 or core <= 0 or wall <= 0:
        raise InvalidInput(f"batch run {m.run_id} scored nothing to measure by")
    schedule = proj.batch_jobs[m.job].schedule
    interval = DAY
    if schedule:
        first = next_fire(schedule, time.time())
        interval = next_fire(schedule, first) - first
    figures = {
        "entities": float(m.total_rows),
        "batch_core_s_per_row": core / scored,
        "batch_rows_per_s": scored / wall,
        "batch_interval_s": interval,
    }
    run = f"batch run {m.run_id} ({scored} rows, {wall:.1f}s wall)"
    sources = dict.fromkeys(figures, run)
    sources["batch_interval_s"] = f"batch_jobs.{m.job}.schedule" + (
        "" if schedule else ": none, daily"
    )
    return figures, sources


def _counters(text: str, proj: Project, route: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    from hybridserve.registry.refs import ModelRef

    model = ModelRef.parse(proj.route(route).model).name
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            lab = s.labels
            if s.name == "hybridserve_requests_total" and lab.get("route") == route:
                kind = "online" if lab.get("source") == "online" else "stored"
                if lab.get("source") in ("online", "cache", "batch", "stream"):
                    sums[kind] = sums.get(kind, 0.0) + s.value
            elif s.name == "hybridserve_stage_seconds_sum" and lab.get("route") == route:
                sums[lab["stage"]] = sums.get(lab["stage"], 0.0) + s.value
            elif s.name in ("hybridserve_model_seconds_sum", "hybridserve_batch_size_sum") and (
                lab.get("model", "").split("/")[0] == model
            ):
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    online, stored = sums.get("online", 0.0), sums.get("stored", 0.0)
    rows = sums.get("hybridserve_batch_size_sum", 0.0)
    if online <= 0 or stored <= 0 or rows <= 0:
        raise InvalidInput(
            f"the counters hold too little of route {route!r} to measure by "
            f"({online:.0f} computed and {stored:.0f} stored answers)"
        )
    return {
        "online_core_s_per_answer": sums["hybridserve_model_seconds_sum"] / rows
        + sums.get("features", 0.0) / online,
        "lookup_core_s_per_answer": (sums.get("cache", 0.0) + sums.get("store", 0.0)) / stored,
        "hit_rate": stored / (online + stored),
    }


async def _sample(proj: Project, route: str, n: int) -> dict[str, float]:
    """Score and look up ``n`` entities one at a time here, on the CPU clock."""
    from hybridserve.services import Services

    services = Services.open(proj)
    try:
        keys = [k async for k in _keys(services, proj, route, n)]
        if not keys:
            raise InvalidInput(f"route {route!r} has no online features to sample")
        await services.score_entities(route, keys[:1])  # warm caches
        started = time.process_time()
        for key in keys:
            await services.score_entities(route, [key])
        online = (time.process_time() - started) / len(keys)
        started = time.process_time()
        for key in keys:
            await services.predictions.get(route, [key])
        lookup = (time.process_time() - started) / len(keys)
    finally:
        await services.close()
    return {"online_core_s_per_answer": online, "lookup_core_s_per_answer": lookup}


async def _keys(services: Any, proj: Project, route: str, n: int) -> Any:
    from hybridserve.features.online import feature_key

    view = next(iter(proj.route_features(route)))
    prefix = feature_key(view, "")
    seen = 0
    async for key in services.online_kv.scan(prefix):
        yield key.partition(prefix)[2] or key  # with or without the store's own prefix
        seen += 1
        if seen >= n:
            return


def _what_if(items: list[str]) -> dict[str, float]:
    known = {"rate": "requests_per_s", "entities": "entities", "active": "active_entities"}
    known["hit_rate"] = "hit_rate"
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or key not in known or number < 0:
            raise InvalidInput(
                f"--what-if: expected NAME=NUMBER with NAME one of {', '.join(known)}, got {item!r}"
            )
        out[known[key]] = number
    return out


def gather(
    proj: Project,
    route: str,
    *,
    metrics: str | None,
    rate: float | None,
    active: int | None,
    sample: int = SAMPLE,
) -> tuple[Inputs, dict[str, str]]:
    """The measured inputs for ``route`` and, per input, where it came from."""
    cfg = proj.route(route)
    batch, batch_source = _batch(proj, route)
    sources = batch_source
    if metrics is not None:
        online = _counters(_read(metrics), proj, route)
        sources.update(dict.fromkeys(online, f"server counters ({metrics})"))
    else:
        online = run(_sample(proj, route, sample))
        sources.update(dict.fromkeys(online, f"measured here ({sample} entities, CPU time)"))
        online["hit_rate"] = DEFAULT_HIT_RATE
        sources["hit_rate"] = "assumed: requests for the active entities (--what-if hit_rate=)"
    entities = int(batch["entities"])
    sources["requests_per_s"] = "--rate" if rate is not None else "assumed (give --rate)"
    sources["active_entities"] = "--active" if active is not None else "assumed: a fifth"
    sources["freshness_s"] = f"routes.{route}.max_staleness (batch)"
    sources["core_hour"] = "cost.core_hour" + (
        "" if "cost" in proj.model_fields_set else " (the default, an example price)"
    )
    inputs = Inputs(
        requests_per_s=DEFAULT_RATE if rate is None else rate,
        entities=entities,
        active_entities=max(1, entities // 5) if active is None else active,
        hit_rate=online["hit_rate"],
        batch_core_s_per_row=batch["batch_core_s_per_row"],
        batch_rows_per_s=batch["batch_rows_per_s"],
        batch_interval_s=batch["batch_interval_s"],
        online_core_s_per_answer=online["online_core_s_per_answer"],
        lookup_core_s_per_answer=online["lookup_core_s_per_answer"],
        freshness_s=cfg.staleness("batch"),
        core_hour=proj.cost.core_hour,
        currency=proj.cost.currency,
    )
    return inputs, sources


def _read(where: str) -> str:
    if where.startswith(("http://", "https://")):
        import httpx

        return httpx.get(where, timeout=10).raise_for_status().text
    return Path(where).read_text()


def _print(advice: Advice, sources: dict[str, str], title: str) -> None:
    cur = advice.inputs.currency
    rows = [
        [
            m.mode,
            f"{m.cost_per_1k:.3g}",
            f"{m.cost_per_day:.3g}",
            f"{m.core_s_per_day:.4g}",
            _age(m.staleness_s),
            "yes" if m.meets_freshness else "no",
        ]
        for m in advice.modes
    ]
    cols = ["mode", f"{cur} per 1k", f"{cur} per day", "core-s per day", "staleness", "fresh"]
    table(title, cols, rows)
    for m in advice.modes:
        console.print(f"  {m.mode}: {m.note}")
    console.print(f"choice: {advice.choice or 'none'}: {advice.why}")
    console.print("numbers used:")
    for key, value in vars_of(advice).items():
        console.print(f"  {key} = {value:.6g}  ({sources.get(key, '')})")


def vars_of(advice: Advice) -> dict[str, float]:
    data = advice.to_json()["inputs"]
    return {k: v for k, v in data.items() if isinstance(v, int | float)}


def _age(seconds: float) -> str:
    if seconds == 0:
        return "0 (computed now)"
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def advise_command(
    route: Annotated[str, typer.Argument(help="The route, e.g. fraud.")],
    metrics: Annotated[
        str | None,
        typer.Option(help="A server's /metrics URL or a saved scrape (default: measure here)."),
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second.")] = None,
    active: Annotated[
        int | None, typer.Option(help="Active entities the hybrid mode precomputes.")
    ] = None,
    what_if: Annotated[
        list[str],
        typer.Option("--what-if", help="rate=, entities=, active=, hit_rate=; repeatable."),
    ] = [],  # noqa: B006
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Cost per 1k predictions and per day of batch-only, online-only and hybrid serving,
    their staleness, and the cheapest that meets the route's freshness bound."""
    from dataclasses import replace

    proj = project(project_path)
    inputs, sources = gather(proj, route, metrics=metrics, rate=rate, active=active)
    advice = advise(inputs)
    changes = _what_if(what_if)
    whole = {"entities", "active_entities"}
    typed = {k: int(v) if k in whole else v for k, v in changes.items()}
    other = advise(replace(inputs, **typed)) if changes else None  # type: ignore[arg-type]
    if json:
        print_json(
            {
                "advice": advice.to_json(),
                "sources": sources,
                **({"what_if": other.to_json()} if other is not None else {}),
            }
        )
        return
    _print(advice, sources, f"route {route}: measured")
    if other is not None:
        sources.update(dict.fromkeys(changes, "--what-if"))
        _print(other, sources, f"route {route}: what if {', '.join(what_if)}")
