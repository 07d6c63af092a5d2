"""Drift against a version's reference profile: the shifted feature crosses its threshold and
the others stay below; a feature going missing is drift; the registry keeps the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybridserve.config import DriftConfig, project_from_dict
from hybridserve.quality.drift import DriftMonitor, compare, psi
from hybridserve.quality.log import PredictionLog, row
from hybridserve.quality.profile import Profile, build_profile
from hybridserve.quality.sinks import MemorySink
from hybridserve.records import now
from hybridserve.registry import Registry

RNG = np.random.default_rng(7)
N = 4000


def training() -> dict[str, Any]:
    return {
        "amount": RNG.lognormal(3, 1, N),
        "risk": RNG.uniform(0, 1, N),
        "country": RNG.choice(["FR", "DE", "US"], N, p=[0.5, 0.3, 0.2]).tolist(),
    }


def traffic(n: int, shift_risk: bool = False, missing_amount: float = 0.0) -> list[dict[str, Any]]:
    amount = RNG.lognormal(3, 1, n)
    risk = RNG.uniform(0.5, 1.5, n) if shift_risk else RNG.uniform(0, 1, n)
    country = RNG.choice(["FR", "DE", "US"], n, p=[0.5, 0.3, 0.2])
    rows = []
    for i in range(n):
        a = None if RNG.random() < missing_amount else float(amount[i])
        rows.append({"amount": a, "risk": float(risk[i]), "country": str(country[i])})
    return rows


def test_psi_of_equal_shares_is_zero_and_grows_with_the_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])


def test_profile_survives_json_and_bins_by_quantiles() -> None:
    data = training()
    prof = build_profile(data, RNG.uniform(0, 1, N))
    again = Profile.from_dict(prof.to_dict())
    assert again == prof
    shares = prof.features["risk"].shares
    assert len(shares) == 10 and all(abs(s - 0.1) < 0.01 for s in shares)
    cats = prof.features["country"]
    assert cats.kind == "categorical" and cats.categories[0] == "FR"


def test_the_shifted_feature_drifts_and_the_others_do_not() -> None:
    prof = build_profile(training())
    cfg = DriftConfig(psi=0.2, ks_pvalue=0.001)
    report = compare("r", prof, traffic(2000, shift_risk=True), [], cfg)
    drifted = {f.name: f.drifted for f in report.features}
    assert drifted == {"amount": False, "risk": True, "country": False}
    risk = next(f for f in report.features if f.name == "risk")
    assert risk.psi > 0.2 and risk.ks_pvalue is not None and risk.ks_pvalue < 0.001
    assert all(f.psi < 0.2 for f in report.features if f.name != "risk")
    assert report.reasons and report.reasons[0].startswith("feature risk: PSI")
    calm = compare("r", prof, traffic(2000), [], cfg)
    assert calm.judged and calm.reasons == []


def test_a_feature_going_missing_is_drift() -> None:
    prof = build_profile(training())
    report = compare("r", prof, traffic(1000, missing_amount=0.3), [], DriftConfig())
    amount = next(f for f in report.features if f.name == "amount")
    assert amount.drifted and any("missing 3" in r for r in amount.reasons)
    assert amount.missing == pytest.approx(0.3, abs=0.05)


def test_too_few_answers_or_no_profile_is_no_judgement() -> None:
    prof = build_profile(training())
    few = compare("r", prof, traffic(10, shift_risk=True), [], DriftConfig())
    assert not few.judged and few.reasons == [] and "fewer than" in few.note
    none = compare("r", None, traffic(500), [], DriftConfig())
    assert not none.judged and "no reference" in none.note


def test_the_monitor_judges_logged_answers_on_their_model_version(tmp_path: Path) -> None:
    proj = project_from_dict(
        {
            "entities": {"card": {"key": "card_id"}},
            "routes": {
                "r": {
                    "model": "m@production",
                    "entity": "card",
                    "log": {"online": 1.0},
                    "drift": {"min_samples": 100, "window": "10m"},
                }
            },
        },
        tmp_path,
    )
    prof = build_profile(training(), RNG.uniform(0, 1, N))
    monitor = DriftMonitor(proj, lambda m, v: prof if (m, v) == ("m", 1) else None, every=0)
    plog = PredictionLog(proj, MemorySink(), observers=[monitor.observe])
    t = now()
    for i, values in enumerate(traffic(500, shift_risk=True)):
        plog.offer(
            row(
                ts=t,
                route="r",
                source="online",
                entity=str(i),
                model="m",
                model_version=1,
                score=float(RNG.uniform()),
                features=values,
            ),
            values,
        )
    report = monitor.report("r")
    assert report.judged and report.model_version == 1 and report.n == 500
    assert [f.name for f in report.features if f.drifted] == ["risk"]
    assert report.score is not None and not report.score.drifted
    assert list(monitor.reasons()) == ["r"]


def test_the_registry_keeps_a_reference_profile_per_version(tmp_path: Path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path}/reg.db", tmp_path / "art")
    try:
        mv = reg.register(
            "m", callable_ref="math:fsum", features=["amount", "risk"], task="regression"
        )
        assert reg.reference("m", mv.version) is None
        prof = build_profile({"amount": [1.0, 2.0, 3.0], "risk": [0.1, 0.2, 0.3]})
        reg.set_reference(mv.ref, prof.to_dict())
        got = reg.reference("m", mv.version)
        assert got is not None and Profile.from_dict(got) == prof
        assert reg.audit("m")[0].action == "reference"
    finally:
        reg.close()


def test_a_version_1_registry_gets_the_profiles_table_when_opened(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/old.db"
    Registry.open(url, tmp_path / "art").close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # as version 1 left it
        conn.execute("DROP TABLE reference_profiles")
        conn.execute("UPDATE schema_version SET version = 1")
    reg = Registry.open(url, tmp_path / "art")
    try:
        mv = reg.register("m", callable_ref="math:fsum", features=["a"], task="regression")
        reg.set_reference(mv.ref, build_profile({"a": [1.0, 2.0]}).to_dict())
        assert reg.reference("m", 1) is not None
    finally:
        reg.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
