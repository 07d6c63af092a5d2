"""Redis CPU of the stream commit script, against the script of an earlier commit.

Not a timed test: run it by hand (about half a minute)::

    taskset -c 1 .venv/bin/python bench/redis_commit.py            # against HEAD's script
    taskset -c 1 .venv/bin/python bench/redis_commit.py --rev c24240a

Each round commits one batch shaped like the stream bench's (750 window states of 300 bytes
picked at random from 4,456 cards, 1,000 seen events, 1,000 outputs) through each script,
alternating which goes first, and charges each the Redis server's CPU time (``INFO cpu``)
used by its call. Keys live under ``hsbench:commit:`` on ``--redis`` and are deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import subprocess
from pathlib import Path

import msgpack
import redis

from hybridserve.streaming.state import _COMMIT_LUA

REPO = Path(__file__).resolve().parent.parent
PREFIX = "hsbench:commit:"


def script_at(rev: str) -> str:
    text = subprocess.run(
        ["git", "show", f"{rev}:src/hybridserve/streaming/state.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return text.split('_COMMIT_LUA = """', 1)[1].split('"""', 1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="HEAD", help="the git revision whose script is compared")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = p.parse_args()
    r = redis.Redis.from_url(args.redis)
    scripts = {
        args.rev: r.register_script(script_at(args.rev)),
        "tree": r.register_script(_COMMIT_LUA),
    }
    versions: dict[str, dict[int, int]] = {name: {} for name in scripts}
    spent = dict.fromkeys(scripts, 0.0)

    def pack(xs: list[bytes]) -> bytes:
        return msgpack.packb(xs, use_bin_type=False)  # type: ignore[no-any-return]

    def cpu_us() -> float:
        c = r.info("cpu")
        return (float(c["used_cpu_user"]) + float(c["used_cpu_sys"])) * 1e6

    def commit(name: str, b: int) -> None:
        cards = random.sample(range(4456), 750)
        v = versions[name]
        base = f"{PREFIX}{name}:"
        argv = [
            600_000,
            0,
            base + "out",
            pack([f"{base}s:{c}".encode() for c in cards]),
            pack([str(v.get(c, 0)).encode() for c in cards]),
            pack([b"x" * 300] * 750),
            pack([f"{base}seen:{b}:{i}".encode() for i in range(1000)]),
            pack([f"{b}-{i}".encode() for i in range(1000)]),
            pack([b"p" * 150] * 1000),
        ]
        before = cpu_us()
        assert scripts[name](keys=[], args=argv) == 1
        spent[name] += cpu_us() - before
        for c in cards:
            v[c] = v.get(c, 0) + 1

    try:
        for b in range(args.rounds):
            for name in list(scripts) if b % 2 else list(scripts)[::-1]:
                commit(name, b)
    finally:
        for key in r.scan_iter(f"{PREFIX}*", count=10_000):
            r.delete(key)
    for name, us in spent.items():
        print(f"{name}: {us / args.rounds:,.0f} us of Redis CPU per commit")


if __name__ == "__main__":
    main()
