"""A batch job's runner: one process that runs the job's scheduled runs one after another.

A run's first seconds go to starting the forkserver its workers fork from, which imports the
model's libraries (scikit-learn's ensembles take about 2 s on this project's test machine):
measured on a million rows, a job's first scheduled run took 10.2 s and its second, in the
runner the first started, 8.2 s (``docs/benchmarks.md``). So the scheduler
(``serve --scheduler``) hands each job's runs to a runner of that job: the first run starts
it, later ones find its forkserver warm. A crash or a kill of a run still never touches the
server, and a killed run is resumed like any other: it takes the runner with it, and the next
due run starts a new one.

The runner reads one line per run on its standard input and answers with one JSON line on its
standard output (``{"status": "completed", "run_id": ...}``, or ``"failed"`` with the error);
everything else it prints, its log and each run's manifest, goes to its standard error, which
the scheduler sends to the job's ``scheduler.log``. It reloads the project file for every run
(the file may have changed in between) and exits when its input closes.

``python -m hybridserve.batch.job_process -p FILE JOB`` starts one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("hybridserve.batch.job_process")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridserve.batch.job_process")
    parser.add_argument("job")
    parser.add_argument("-p", "--project", required=True, type=Path)
    args = parser.parse_args(argv)
    # The answers get the real standard output; anything else printed goes to the log.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from hybridserve.observability.logging import configure

    configure("info")
    for _ in sys.stdin:
        answer = _one(args.project, args.job)
        try:
            _answer(answers, answer)
        except BrokenPipeError:  # the scheduler is gone: nobody is left to ask for a run
            return 0
    return 0


def _one(project_file: Path, job: str) -> dict[str, Any]:
    from hybridserve.batch import RunFailed, run_job
    from hybridserve.config import load_project
    from hybridserve.errors import HybridServeError

    started = time.monotonic()
    try:
        manifest = run_job(load_project(project_file), job)
    except RunFailed as exc:
        return {"status": "failed", "error": exc.message}
    except HybridServeError as exc:  # a bad project file, a missing job: this run only
        log.error("batch job %s could not run: %s", job, exc.message)
        return {"status": "failed", "error": exc.message}
    except Exception as exc:
        log.exception("batch job %s failed", job)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    log.info(
        "batch job %s: run %s %s in %.1f s",
        job,
        manifest.run_id,
        manifest.status,
        time.monotonic() - started,
    )
    print(json.dumps(manifest.to_dict(), default=str), file=sys.stderr, flush=True)
    return {"status": manifest.status, "run_id": manifest.run_id}


def _answer(out: IO[str], answer: dict[str, Any]) -> None:
    out.write(json.dumps(answer) + "\n")
    out.flush()


class JobRunner:
    """The scheduler's side of one job's runner process (started on the first run)."""

    def __init__(self, project_file: Path, job: str, log_path: Path) -> None:
        self.project_file, self.job, self.log_path = project_file, job, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start_run(self) -> RunHandle:
        """Ask the runner for a run, starting the runner when it is not running."""
        if self.proc is None or self.proc.returncode is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *("-m", __name__, "-p", str(self.project_file), self.job),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=out,
                )
        proc = self.proc
        assert proc.stdin is not None
        proc.stdin.write(b"run\n")
        await proc.stdin.drain()
        return RunHandle(proc)

    async def close(self, timeout: float = 10.0) -> None:
        """End the runner: its input closes, so it exits once a run in progress ends; after
        ``timeout`` it is terminated."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.terminate()
            await proc.wait()


class RunHandle:
    """One run in a runner, as the scheduler sees a run: its return code once it ended (0 when
    it completed), ``wait`` and ``terminate`` (which ends the runner: the run resumes later)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.returncode: int | None = None
        self.answer: dict[str, Any] = {}
        self._done = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:  # the runner ended without answering: killed, or crashed
            code = await self._proc.wait()
            self.answer = {"status": "failed", "error": f"the runner exited with code {code}"}
            self.returncode = code or 1
            return
        self.answer = json.loads(line)
        self.returncode = 0 if self.answer.get("status") == "completed" else 1

    async def wait(self) -> int:
        await asyncio.shield(self._done)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self._proc.returncode is None:
            self._proc.terminate()


if __name__ == "__main__":
    sys.exit(main())
