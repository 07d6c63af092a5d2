"""``/dashboard`` and ``/v1/dashboard/data`` in process: who may read the figures, what they
hold after traffic, and that the page loads nothing from another origin. (The page in a real
browser: ``test_dashboard_browser.py``.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from hybridserve.config import Project

MakeProject = Callable[..., Project]
KEYS = [
    {"name": "app", "key": "k-predict", "scopes": ["predict"]},
    {"name": "viewer", "key": "k-read", "scopes": ["read"]},
    {"name": "ops", "key": "k-admin", "scopes": ["admin"]},
]


async def test_the_figures_need_the_read_or_admin_scope(
    make_project: MakeProject, serve: Any
) -> None:
    _, client = await serve(make_project({"server": {"api_keys": KEYS}}))
    for headers, status in (
        ({}, 401),
        ({"x-api-key": "wrong"}, 401),
        ({"x-api-key": "k-predict"}, 403),
        ({"x-api-key": "k-read"}, 200),
        ({"authorization": "Bearer k-admin"}, 200),
    ):
        r = await client.get("/v1/dashboard/data", headers=headers)
        assert r.status_code == status, (headers, r.text)
    # A read key reads; it does not administer.
    r = await client.get("/v1/admin/routes", headers={"x-api-key": "k-read"})
    assert r.status_code == 403
    # The page itself holds no data: it loads without a key and asks for one.
    page = await client.get("/dashboard")
    assert page.status_code == 200 and 'id="login"' in page.text


async def test_the_figures_after_traffic(make_project: MakeProject, serve: Any) -> None:
    _, client = await serve(make_project())
    for body in ({"entity": "card_000001"}, {"entity": "card_000002", "mode": "compute"}):
        r = await client.post("/v1/predict/fraud", json=body)
        assert r.status_code == 200, r.text
    r = await client.get("/v1/dashboard/data")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    data = r.json()
    route = data["routes"]["fraud"]
    sources = {p for p, a in route["answers"].items() if a["total"] > 0}
    assert "online" in sources, route["answers"]
    assert route["stages"]["total"]["count"] >= 2
    assert route["stages"]["total"]["budget_ms"] == 50.0
    assert route["models"][0]["role"] == "primary"
    assert set(data["breakers"]) >= {"feature_store", "prediction_store"}
    assert [s["stream"] for s in data["streams"]] == ["transactions"]
    assert list(data["batch_jobs"]) == ["fraud_daily"]  # no run yet: an empty list
    assert data["batch_jobs"]["fraud_daily"] == []


async def test_the_page_loads_only_same_origin_assets(
    make_project: MakeProject, serve: Any
) -> None:
    _, client = await serve(make_project())
    page = await client.get("/dashboard")
    assert page.headers["content-type"].startswith("text/html")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    assert len(refs) == 4, refs
    kinds = {".css": "text/css", ".js": "text/javascript"}
    for ref in refs:
        assert ref.startswith("/dashboard/"), f"{ref} is not served by the dashboard"
        r = await client.get(ref)
        assert r.status_code == 200, ref
        kind = next(v for k, v in kinds.items() if ref.endswith(k))
        assert r.headers["content-type"].startswith(kind), (ref, r.headers["content-type"])
    assert "uPlot" in (await client.get("/dashboard/uPlot.iife.min.js")).text
    js = (await client.get("/dashboard/dashboard.js")).text
    assert "sessionStorage" in js and "localStorage" not in js


@pytest.mark.parametrize("text", ["viewer:k1:read", "ops:k2:admin"])
def test_environment_keys_take_the_read_scope(text: str) -> None:
    from hybridserve.server.auth import Authenticator, parse_env_keys

    auth = Authenticator(parse_env_keys(text))
    key = text.split(":")[1].encode()
    assert auth.check(key, "read") == text.split(":")[0]
