"""Synthetic card data for the fraud example: card profiles (with labels) and raw transactions.

Everything is drawn from one seeded ``numpy`` generator in a fixed order, so the same seed
(and the same ``as_of``/``start``) gives byte-identical tables. Only numpy and pyarrow are
needed. The label comes from a hidden logistic model over a handful of features plus noise
the features cannot see, so a good model reaches a ROC AUC well above chance but far from 1.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES: list[str] = [
    "amount_mean_30d",
    "amount_std_30d",
    "amount_median_30d",
    "max_amount_7d",
    "txn_count_1d",
    "txn_count_7d",
    "txn_count_30d",
    "distinct_merchants_30d",
    "distinct_countries_30d",
    "foreign_txn_share_30d",
    "night_txn_share_30d",
    "online_share_30d",
    "avg_ticket_online",
    "card_age_days",
    "credit_limit",
    "utilization",
    "declined_count_7d",
    "chargeback_count_365d",
    "velocity_1h_mean",
    "velocity_1h_max",
    "days_since_last_txn",
    "amount_zscore_last",
    "new_merchant_share_7d",
    "high_risk_mcc_share_30d",
    "atm_withdrawal_count_30d",
    "cardholder_age_years",
    "account_tenure_days",
    "address_change_days",
    "device_count_30d",
    "ip_country_mismatch_share_30d",
]
"""The 30 model features, in signature order."""

NULLABLE_FEATURES: dict[str, float] = {"cardholder_age_years": 45.0, "address_change_days": 730.0}
"""Features with about 1% missing values, and the value the project file imputes for them."""

LABEL = "is_fraud"
ENTITY_KEY = "card_id"
TIMESTAMP = "event_time"
FRAUD_RATE = 0.02
MISSING_RATE = 0.01

MERCHANT_CATEGORIES: list[str] = [
    "grocery",
    "restaurants",
    "fuel",
    "online_retail",
    "travel",
    "electronics",
    "entertainment",
    "atm",
    "gambling",
    "crypto",
]
_CATEGORY_WEIGHTS = np.array([0.24, 0.18, 0.12, 0.18, 0.05, 0.07, 0.08, 0.05, 0.02, 0.01])

_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FloatArray = npt.NDArray[np.float64]


def card_ids(n_cards: int) -> list[str]:
    """Card keys ``card_000000`` .. for ``n_cards`` cards."""
    return [f"card_{i:06d}" for i in range(n_cards)]


def _micros(moment: datetime | None) -> int:
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _US


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def _intercept_for_rate(risk: FloatArray, rate: float) -> float:
    """The intercept ``b`` with ``mean(sigmoid(risk + b)) == rate`` (bisection; deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(_sigmoid(risk + mid).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _standardize(x: FloatArray) -> FloatArray:
    return np.asarray((x - x.mean()) / (x.std() + 1e-12), dtype=np.float64)


def _card_features(rng: np.random.Generator, n: int) -> dict[str, FloatArray]:
    # A latent activity level per card, so the count features move together.
    activity = rng.lognormal(0.0, 0.6, n)
    amount_mean = rng.lognormal(3.7, 0.6, n)
    count_30d = rng.poisson(30.0 * activity).astype(np.float64)
    count_7d = rng.binomial(count_30d.astype(np.int64), 7 / 30).astype(np.float64)
    count_1d = rng.binomial(count_7d.astype(np.int64), 1 / 7).astype(np.float64)
    card_age = np.floor(rng.gamma(2.0, 400.0, n)) + 1.0
    velocity_mean = rng.gamma(1.5, 0.3, n) * activity
    f: dict[str, FloatArray] = {
        "amount_mean_30d": np.round(amount_mean, 2),
        "amount_std_30d": np.round(amount_mean * rng.uniform(0.3, 1.2, n), 2),
        "amount_median_30d": np.round(amount_mean * rng.uniform(0.6, 0.95, n), 2),
        "max_amount_7d": np.where(
            count_7d > 0, np.round(amount_mean * (1.0 + rng.gamma(2.0, 0.7, n)), 2), 0.0
        ),
        "txn_count_1d": count_1d,
        "txn_count_7d": count_7d,
        "txn_count_30d": count_30d,
        "distinct_merchants_30d": np.minimum(
            count_30d, rng.poisson(0.5 * count_30d + 1.0).astype(np.float64)
        ),
        "distinct_countries_30d": (1 + rng.poisson(0.2, n)).astype(np.float64),
        "foreign_txn_share_30d": rng.beta(0.5, 12.0, n),
        "night_txn_share_30d": rng.beta(1.2, 10.0, n),
        "online_share_30d": rng.beta(2.0, 3.0, n),
        "avg_ticket_online": np.round(amount_mean * rng.lognormal(0.0, 0.3, n), 2),
        "card_age_days": card_age,
        "credit_limit": np.clip(np.round(rng.lognormal(8.3, 0.6, n) / 100.0) * 100.0, 500, 50_000),
        "utilization": rng.beta(2.0, 5.0, n),
        "declined_count_7d": rng.poisson(0.3, n).astype(np.float64),
        "chargeback_count_365d": rng.poisson(0.05, n).astype(np.float64),
        "velocity_1h_mean": velocity_mean,
        "velocity_1h_max": velocity_mean + rng.gamma(1.2, 1.0, n),
        "days_since_last_txn": rng.exponential(1.0, n) / activity,
        "amount_zscore_last": rng.standard_normal(n),
        "new_merchant_share_7d": rng.beta(1.0, 6.0, n),
        "high_risk_mcc_share_30d": rng.beta(0.4, 15.0, n),
        "atm_withdrawal_count_30d": rng.poisson(1.5, n).astype(np.float64),
        "cardholder_age_years": np.floor(np.clip(rng.normal(44.0, 14.0, n), 18.0, 95.0)),
        "account_tenure_days": card_age + np.floor(rng.gamma(2.0, 700.0, n)),
        "address_change_days": np.floor(rng.exponential(900.0, n)),
        "device_count_30d": (1 + rng.poisson(0.6, n)).astype(np.float64),
        "ip_country_mismatch_share_30d": rng.beta(0.3, 20.0, n),
    }
    return {name: np.asarray(f[name], dtype=np.float64) for name in FEATURES}


def _hidden_risk(rng: np.random.Generator, f: dict[str, FloatArray]) -> FloatArray:
    """The log-odds of fraud before the intercept: a few features, two interactions, noise."""
    z = {name: _standardize(f[name]) for name in FEATURES}
    risk = (
        0.80 * z["declined_count_7d"]
        + 0.70 * z["foreign_txn_share_30d"]
        + 0.58 * z["ip_country_mismatch_share_30d"]
        + 0.52 * z["velocity_1h_max"]
        + 0.40 * z["new_merchant_share_7d"]
        + 0.40 * z["night_txn_share_30d"]
        # New cards are riskier, but only in their first couple of months.
        + 1.50 * (f["card_age_days"] < 60)
        # Large last amounts matter only on cards that shop at risky merchants.
        + 1.85 * np.clip(z["amount_zscore_last"], 0.0, None) * (z["high_risk_mcc_share_30d"] > 0.5)
        # Many devices only matter for cards that also shop at night.
        + 1.40 * (f["device_count_30d"] >= 3) * (z["night_txn_share_30d"] > 0.0)
    )
    return np.asarray(risk + rng.normal(0.0, 0.7, len(risk)), dtype=np.float64)


def generate_cards(n_cards: int, seed: int = 7, as_of: datetime | None = None) -> pa.Table:
    """One row per card: ``card_id``, ``event_time``, the 30 :data:`FEATURES` and ``is_fraud``.

    ``event_time`` is spread over the 24 hours before ``as_of`` (default: now). About 2% of
    cards are fraudulent; the :data:`NULLABLE_FEATURES` are missing (NaN) for about 1% of cards.
    """
    if n_cards < 1:
        raise ValueError(f"n_cards must be positive, got {n_cards}")
    rng = np.random.default_rng(seed)
    end = _micros(as_of)
    offsets = rng.integers(1, 86_400 * 1_000_000, n_cards)
    features = _card_features(rng, n_cards)
    risk = _hidden_risk(rng, features)
    p = _sigmoid(risk + _intercept_for_rate(risk, FRAUD_RATE))
    label = (rng.random(n_cards) < p).astype(np.int64)
    for name in NULLABLE_FEATURES:
        values = features[name].copy()
        values[rng.random(n_cards) < MISSING_RATE] = np.nan
        features[name] = values

    columns: dict[str, pa.Array] = {
        ENTITY_KEY: pa.array(card_ids(n_cards), pa.string()),
        TIMESTAMP: pa.array(end - offsets, pa.timestamp("us", tz="UTC")),
    }
    for name in FEATURES:
        columns[name] = pa.array(features[name], pa.float64())
    columns[LABEL] = pa.array(label, pa.int64())
    return pa.table(columns)


WINDOW_FEATURES: list[str] = [
    "txn_count_10m",
    "amount_sum_10m",
    "amount_max_1h",
    "distinct_merchants_1h",
    "foreign_count_1h",
]
"""The ``card_txn_windows`` features the ``fraud_windows`` model reads (the stream keeps them)."""


def generate_windows(cards: pa.Table, seed: int = 7) -> pa.Table:
    """``cards`` (labelled, from :func:`generate_cards`) with the :data:`WINDOW_FEATURES`
    a card would show in its last hour, for training ``fraud_windows``.

    Drawn from their own generator (``seed``), after the cards, so the cards' columns are
    unchanged. Most fraudulent cards are in a burst: more transactions in the last minutes,
    larger amounts, more merchants, more of them foreign. So a fresh event that moves these
    windows moves the model's score. A card with no recent transaction has zeros (which is
    also what the route imputes for a card without a window row).
    """
    rng = np.random.default_rng([seed, 1])
    n = cards.num_rows
    fraud = cards.column(LABEL).to_numpy() == 1
    burst = fraud & (rng.random(n) < 0.7)
    typical = cards.column("amount_mean_30d").to_numpy().astype(np.float64)
    foreign_share = cards.column("foreign_txn_share_30d").to_numpy().astype(np.float64)
    count_10m = rng.poisson(np.where(burst, 3.0, 0.2)).astype(np.int64)
    count_1h = count_10m + rng.poisson(np.where(burst, 2.0, 0.6)).astype(np.int64)
    scale = np.where(burst, 2.0, 1.0)
    amount_sum = np.round(count_10m * typical * scale * rng.lognormal(0.0, 0.3, n), 2)
    amount_max = np.where(
        count_1h > 0, np.round(typical * scale * (1.0 + rng.gamma(2.0, 0.4, n)), 2), 0.0
    )
    merchants = np.minimum(count_1h, rng.binomial(count_1h, np.where(burst, 0.9, 0.6)) + 1)
    merchants = np.where(count_1h > 0, merchants, 0)
    foreign = rng.binomial(count_1h, np.where(burst, 0.5, foreign_share))
    values: dict[str, npt.ArrayLike] = {
        "txn_count_10m": count_10m,
        "amount_sum_10m": amount_sum,
        "amount_max_1h": amount_max,
        "distinct_merchants_1h": merchants,
        "foreign_count_1h": foreign,
    }
    out = cards
    for name in WINDOW_FEATURES:
        out = out.append_column(name, pa.array(np.asarray(values[name], np.float64), pa.float64()))
    return out


def generate_transactions(
    n_events: int,
    cards: list[str] | int = 1000,
    seed: int = 7,
    start: datetime | None = None,
    rate_per_s: float = 100.0,
) -> pa.Table:
    """Raw card transactions for the streaming demo, in (roughly) arrival order.

    Columns: ``event_id`` (unique per seed), ``card_id``, ``event_time`` (increasing from
    ``start`` at about ``rate_per_s`` events a second, with about 1% arriving up to 30 s late,
    hence out of order), ``amount``, ``merchant_id``, ``merchant_category``, ``is_foreign``.
    """
    if n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    ids = card_ids(cards) if isinstance(cards, int) else list(cards)
    if not ids:
        raise ValueError("cards must not be empty")
    rng = np.random.default_rng(seed)
    n_cards = len(ids)
    # Some cards are far busier than others; each card has its own typical amount.
    activity = rng.pareto(1.5, n_cards) + 1.0
    card_amount = rng.lognormal(3.5, 0.7, n_cards)
    card_foreign = rng.beta(0.5, 12.0, n_cards)

    card_idx = rng.choice(n_cards, size=n_events, p=activity / activity.sum())
    gaps = rng.exponential(1_000_000 / rate_per_s, n_events)
    times = _micros(start) + np.cumsum(gaps).astype(np.int64)
    late = rng.random(n_events) < 0.01
    times = times - np.where(late, rng.integers(1_000_000, 30_000_000, n_events), 0)
    amount = np.round(card_amount[card_idx] * rng.lognormal(0.0, 0.5, n_events), 2)
    merchants = rng.integers(0, 5_000, n_events)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n_events, p=_CATEGORY_WEIGHTS)
    foreign = rng.random(n_events) < card_foreign[card_idx]

    return pa.table(
        {
            "event_id": pa.array([f"evt_{seed}_{i:09d}" for i in range(n_events)], pa.string()),
            ENTITY_KEY: pa.array([ids[i] for i in card_idx], pa.string()),
            TIMESTAMP: pa.array(times, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
            "merchant_id": pa.array([f"m_{m:05d}" for m in merchants], pa.string()),
            "merchant_category": pa.array([MERCHANT_CATEGORIES[c] for c in category], pa.string()),
            "is_foreign": pa.array(foreign, pa.bool_()),
        }
    )


def feature_matrix(table: pa.Table, names: list[str] | None = None) -> FloatArray:
    """The ``(n, len(names))`` float64 matrix of ``names`` (default :data:`FEATURES`)."""
    cols = [table.column(name).to_numpy().astype(np.float64) for name in (names or FEATURES)]
    return np.column_stack(cols) if cols else np.empty((table.num_rows, 0))


def fingerprint(table: pa.Table) -> str:
    """``sha256:`` of the table's Arrow IPC stream: equal tables, equal fingerprints."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` as Parquet (creating parent directories); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target, compression="zstd")
    return target


def read_parquet(path: str | Path) -> pa.Table:
    """Read a Parquet file written by :func:`write_parquet`."""
    return pq.read_table(Path(path))
