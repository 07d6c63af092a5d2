"""Brokers shared by the streaming suites: one Tansu (Kafka protocol) per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backends import tansu_broker


@pytest.fixture(scope="session")
def kafka_brokers() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker started for this session (Tansu, memory
    storage); tests give each topic and group a name of their own."""
    with tansu_broker() as address:
        yield address
