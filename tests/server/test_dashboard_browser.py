"""``/dashboard`` and ``/docs`` in a real browser: headless Chromium driven by Playwright.

One server on the demo project (the fraud example after a batch run and a stream replay),
with auth on, answers traffic from every source and one fallback. The page is opened in a
browser context that refuses every request to another origin (so it must work offline); the
test logs in with a ``read`` key, checks that the charts have drawn their series, that the
figures shown are the ones ``/metrics`` reports, that they move when traffic does, and saves a
screenshot: ``dashboard.png`` in the test's temporary directory, or in
``HYBRIDSERVE_SCREENSHOTS`` when set (``HYBRIDSERVE_SCREENSHOTS=docs/img`` refreshes the one the
README shows).

Needs the system Chromium (Debian: ``apt-get install chromium chromium-driver``; ``scripts/test``
installs it) and the ``playwright`` package (the ``dev`` extra; its own browser download is not
used). Without them the tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from conftest_server import uvicorn_in_thread
from hybridserve.config import Project, load_project
from hybridserve.observability.dashboard import parse
from hybridserve.server.app import HybridApp, create_app

CHROMIUM = os.environ.get("HYBRIDSERVE_CHROMIUM", "/usr/bin/chromium")
PREDICT_KEY, READ_KEY = "k-app-predict", "k-ops-read"
HOW = (
    "needs Chromium and Playwright for Python: apt-get install -y --no-install-recommends "
    "chromium chromium-driver; pip install -e '.[dev]' (scripts/test does both)"
)


def _need_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser test cannot run: {HOW}")
        pytest.skip(HOW)
    return sync_playwright


class Served:
    """The server under test, its app (to drill outages) and a client with a predict key."""

    def __init__(self, app: HybridApp, url: str, project: Project) -> None:
        self.app, self.url, self.project = app, url, project
        self.http = httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": PREDICT_KEY})

    def predict(self, entity: str, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/predict/fraud", json={"entity": entity, **body})
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]  # type: ignore[no-any-return]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse(self.http.get("/metrics").content)

    def read(self, path: str) -> dict[str, Any]:
        """A JSON endpoint the dashboard reads, with the dashboard's (read) key."""
        r = self.http.get(path, headers={"X-API-Key": READ_KEY})
        assert r.status_code in (200, 503), r.text  # /v1/health is 503 while critical
        return r.json()  # type: ignore[no-any-return]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def _project(trained: Path, dest: Path) -> Project:
    shutil.copytree(trained, dest)
    raw = yaml.safe_load((dest / "hybridserve.yaml").read_text())
    raw.setdefault("server", {})["api_keys"] = [
        {"name": "app", "key": PREDICT_KEY, "scopes": ["predict"]},
        {"name": "ops", "key": READ_KEY, "scopes": ["read"]},
    ]
    # Generous budgets: a test on a busy machine must not see its computations cut.
    raw["routes"]["fraud"]["latency_budget"] = "500ms"
    raw["routes"]["fraud"]["budgets"] = {"store": "100ms", "features": "100ms", "model": "400ms"}
    raw["routes"]["fraud"]["slo"] = {"latency": {"p99": "50ms"}, "availability": "99%"}
    (dest / "hybridserve.yaml").write_text(yaml.safe_dump(raw))
    return load_project(dest / "hybridserve.yaml", env=False)


@pytest.fixture(scope="module")
def served(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo project after a batch run and a stream replay, served by uvicorn."""
    from hybridserve.batch.runner import run_job
    from hybridserve.examples.fraud.transactions import replay_demo

    project = _project(trained_dir, tmp_path_factory.mktemp("dash") / "project")
    run_job(project, "fraud_daily")
    streamed = asyncio.run(replay_demo(project, 200, seed=7)).entities
    app = create_app(project, access_log=False)
    with uvicorn_in_thread(app) as url:
        s = Served(app, url, project)
        _traffic(s, streamed)
        yield s
        s.http.close()


def _traffic(s: Served, streamed: list[str]) -> None:
    """Answers from every source, and fallbacks for cards without features."""
    source = s.project.view("card_profile").source
    assert source is not None
    cards = pq.read_table(s.project.path(source.path), columns=["card_id"])["card_id"]
    plain = [c for c in cards.to_pylist() if c not in set(streamed)]
    seen = {s.predict(plain[0])["source"], s.predict(plain[0])["source"]}  # batch, then cache
    seen.add(s.predict(streamed[0])["source"])
    for card in plain[1:4]:
        seen.add(s.predict(card, mode="compute")["source"])
    # Cards the feature store has never seen: no stored answer, no features, so the route's
    # fallback chain answers (its last step, the default).
    seen |= {s.predict(f"card_unknown_{i}", mode="compute")["source"] for i in range(3)}
    fallbacks = {x for x in seen if x.startswith("fallback:")}
    assert {"batch", "cache", "stream", "online"} <= seen and fallbacks, seen


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        yield b
        b.close()


@pytest.fixture
def offline_page(browser: Any, served: Served) -> Iterator[tuple[Any, list[str]]]:
    """A page in a context that refuses every request not to the server under test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    refused: list[str] = []

    def only_same_origin(route: Any) -> None:
        if route.request.url.startswith(served.url + "/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_same_origin)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page, refused
    context.close()
    assert not errors, f"the page raised: {errors}"


def _shown(page: Any, key: str) -> str:
    return str(page.locator(f'[data-route="fraud"] [data-k="{key}"]').first.inner_text())


def _js_fixed(value: float | None, digits: int) -> str:
    """``value`` as the page's ``fmt`` writes it."""
    if value is None:
        return "\u2013"  # the dash the page shows for no value
    return str(int(value)) if float(value).is_integer() else f"{value:.{digits}f}"


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# Pixels in each chart's canvas that have a series' stroke colour: the series were drawn,
# not only the axes and grid.
_DRAWN = """(route) => {
  const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const out = {};
  for (const [name, chart] of Object.entries(window.hsCharts[route])) {
    if (!chart || !chart.ctx) continue;
    const {width, height} = chart.ctx.canvas;
    const px = chart.ctx.getImageData(0, 0, width, height).data;
    out[name] = chart.series.slice(1).map((s) => {
      const stroke = typeof s.stroke === "function" ? s.stroke(chart, 1) : s.stroke;
      const [r, g, b] = hex(String(stroke));
      let n = 0;
      for (let i = 0; i < px.length; i += 4) {
        if (px[i + 3] > 200 && Math.abs(px[i] - r) < 40 && Math.abs(px[i + 1] - g) < 40
            && Math.abs(px[i + 2] - b) < 40) n++;
      }
      return [s.label, n];
    });
  }
  return out;
}"""


def _login(page: Any, url: str) -> None:
    page.goto(url + "/dashboard")
    page.wait_for_selector("#login:not([hidden])")  # no key yet: the data answered 401
    page.fill("#key", READ_KEY)
    page.click("#login button")
    page.wait_for_selector('[data-route="fraud"] [data-k="answers.batch.total"]')
    assert page.evaluate("sessionStorage.getItem('hybridserve-key')") == READ_KEY
    assert page.evaluate("localStorage.length") == 0


def test_dashboard_draws_what_metrics_says(
    served: Served, offline_page: tuple[Any, list[str]]
) -> None:
    page, refused = offline_page
    _login(page, served.url)
    # Rates need two polls; wait for the third so every chart has a line.
    _wait_for(lambda: page.evaluate("window.hsCharts.fraud.history.t.length") >= 3, "polls")
    m = served.metrics()

    def metric(name: str, **labels: str) -> int:
        return int(m.get((name, tuple(sorted(labels.items()))), 0.0))

    for src in ("batch", "cache", "stream", "online"):
        want = metric("hybridserve_requests_total", route="fraud", source=src, status="ok")
        assert want > 0 and _shown(page, f"answers.{src}.total") == str(want), src
    fallbacks = [
        (labels, int(v))
        for (name, labels), v in m.items()
        if name == "hybridserve_fallbacks_total" and dict(labels)["route"] == "fraud"
    ]
    assert fallbacks
    for labels, v in fallbacks:
        lab = dict(labels)
        assert _shown(page, f"fallbacks.{lab['kind']}/{lab['reason']}") == str(v)
    for tier in ("l1", "store"):
        want = metric("hybridserve_cache_hits_total", route="fraud", tier=tier)
        assert _shown(page, f"cache.{tier}.hits") == str(want), tier
    version = next(
        dict(labels)["version"]
        for (name, labels), _ in m.items()
        if name == "hybridserve_model_info" and dict(labels)["role"] == "primary"
    )
    assert _shown(page, "model.primary.version") == version
    assert float(_shown(page, "stage.total.p99_ms")) > 0
    budgets = {  # the stage budgets shown are the ones the server exports
        dict(labels)["stage"]: v * 1000
        for (name, labels), v in m.items()
        if name == "hybridserve_stage_budget_seconds" and dict(labels)["route"] == "fraud"
    }
    assert budgets == {"store": 100, "features": 100, "model": 400}, budgets
    for stage, ms in budgets.items():
        assert _shown(page, f"stage.{stage}.budget_ms") == _js_fixed(ms, 1), stage
    assert page.locator("#batch tbody tr").count() >= 1
    assert "completed" in page.locator("#batch tbody").inner_text()
    assert page.locator('#streams [data-k="stream.transactions.lag"]').inner_text() == "0"

    # Health and SLO as the server reports them (both move slowly: compare once they agree).
    def health_agrees() -> bool:
        health = served.read("/v1/health")
        route = next(c for c in health["components"] if c["name"] == "route:fraud")
        shown = page.locator("#health").inner_text()
        return shown == f"health: {health['status']}" and (
            page.locator('[data-route="fraud"] [data-k="health"]').inner_text() == route["status"]
        )

    _wait_for(health_agrees, "the health shown to match /v1/health")
    rows = page.locator("#health-table tbody tr").count()
    assert rows == 1 + len(served.read("/v1/health")["components"])

    def slo_agrees() -> bool:
        objective = served.read("/v1/slo")["routes"]["fraud"]["objectives"]["availability"]
        return _shown(page, "slo.availability.actual") == _js_fixed(objective["actual"], 4)

    _wait_for(slo_agrees, "the SLO shown to match /v1/slo")
    assert _shown(page, "cost.per_1k").endswith("USD")

    drawn = page.evaluate(_DRAWN, "fraud")
    assert set(drawn) == {"rates", "latency", "age"}, drawn
    assert all(n > 20 for _, n in drawn["age"]), drawn
    assert any(n > 20 for _, n in drawn["latency"]), drawn
    # (The rates chart is checked once traffic moves it: at rest its lines lie on the axis.)
    assert not refused, f"requests to other origins: {refused}"


def test_dashboard_follows_traffic(
    served: Served, offline_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, _ = offline_page
    _login(page, served.url)
    before = int(_shown(page, "answers.online.total"))
    _wait_for(lambda: _shown(page, "answers.online.per_s") == "0", "a quiet poll")
    polls = page.evaluate("window.hsCharts.fraud.history.t.length")
    source = served.project.view("card_profile").source
    assert source is not None
    cards = pq.read_table(served.project.path(source.path), columns=["card_id"])["card_id"]
    cards = cards.to_pylist()
    sent = 0
    # Traffic over a few polls (a line, not a point, on the rates chart): fresh computations,
    # and stored answers from the batch run and the cache.
    while page.evaluate("window.hsCharts.fraud.history.t.length") < polls + 2:
        for card in cards[100 + sent : 110 + sent]:
            assert served.predict(card, mode="compute")["source"] == "online"
            served.predict(cards[200 + sent])
        sent += 10
        time.sleep(0.3)
    want = served.metric("hybridserve_requests_total", route="fraud", source="online", status="ok")
    assert want == before + sent
    _wait_for(lambda: _shown(page, "answers.online.total") == str(int(want)), "the new total")
    rates = page.evaluate("window.hsCharts.fraud.history.rates.online")
    assert max(r or 0 for r in rates) > 0, rates
    drawn = dict(page.evaluate(_DRAWN, "fraud")["rates"])
    assert drawn["online"] > 20 and drawn["cache"] > 20, drawn
    shot = Path(os.environ.get("HYBRIDSERVE_SCREENSHOTS") or tmp_path) / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_swagger_ui_renders_offline(served: Served, offline_page: tuple[Any, list[str]]) -> None:
    page, refused = offline_page
    page.goto(served.url + "/docs")
    page.wait_for_selector(".opblock", timeout=15000)
    ops = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/predict/fraud" in ops and "/v1/dashboard/data" in ops, ops
    assert not refused, f"requests to other origins: {refused}"
