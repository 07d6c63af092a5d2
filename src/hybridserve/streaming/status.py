"""``hybridserve stream status``: lag, pending and dead letters from the source, and each
consumer's throughput from the stats it publishes to the store every few seconds."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from hybridserve.services import Services
from hybridserve.streaming.sources import Measured, SourceInfo, open_io, stream_config


async def stream_status(services: Services, name: str) -> dict[str, Any]:
    """Everything known about stream ``name``, as plain data."""
    cfg = stream_config(services.project, name)
    io = open_io(services.project, name, consumer="status", kv=services.online_kv)
    source = io.source
    try:
        info = SourceInfo()
        if isinstance(source, Measured):
            if source.kind == "replay":
                await source.start()
            info = await source.info()
    finally:
        await io.close()
    keys = [k async for k in services.online_kv.scan(f"sx:{name}:")]
    consumers = [orjson.loads(e.value) for e in await services.online_kv.get_many(keys) if e]
    return {
        "stream": name,
        "source": cfg.source.kind,
        "route": cfg.route,
        **asdict(info),
        "events_per_s": round(sum(c.get("events_per_s", 0.0) for c in consumers), 1),
        "consumers": sorted(consumers, key=lambda c: str(c.get("consumer"))),
    }
