"""Schemathesis over the whole ``/openapi.json`` of a live server, auth off and on.

Every documented operation is called with generated requests, both ones the document allows
and ones it forbids, and each answer is checked: no server error, a documented status code,
a body matching the documented schema, a documented content type, every request the document
allows accepted and every one it forbids rejected. So the document and the server cannot
drift apart. A failure prints schemathesis' report with a curl line to reproduce it.

Two rules are beyond what JSON Schema can state, and the run says so instead of hiding them:

- an event time may be at most ``max_future`` ahead of the server's clock when the request
  arrives ("now" cannot be written into a schema): ``openapi_fuzz_hooks`` sends no event
  past the bound the document states as of when it was built;
- a V2 inference request's tensors must fit the model (the data must hold as many values as
  the shape says, the inputs must name its features): a request the schema allows may get a
  400 there, and that one operation's acceptance check allows it.

Server errors: a 503 (no acceptable prediction, not ready, shed at the door) and a 504
(timeout) are documented answers, not crashes; any other 5xx fails. A predict request shed at
the door (``routing/admission.py``, when the machine is loaded) is answered before its body is
read, so for those operations a 503 also counts as rejecting a request the schema forbids.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridserve.config import Project

KEY = "fuzz-key-0123456789"
REQUEST_FEATURES = {"amount_zscore_last": "float", "card_age_days": "float"}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
]
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[checks.negative_data_rejection]  # schemathesis' list, and 413 for a body over the limit
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"]

[[operations]]  # a predict request shed at the door (503 Overloaded) is never read or validated
include-operation-id-regex = "^predict_"
checks.negative_data_rejection.expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "503",
]

[[operations]]
include-operation-id-regex = "^v2_infer"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "504"]
"""
AUTH = f"""
[auth.openapi.bearer]
bearer = "{KEY}"

[auth.openapi.apiKey]
api_key = "{KEY}"
"""
EXAMPLES = int(os.environ.get("HYBRIDSERVE_FUZZ_EXAMPLES", "25"))
"""Generated cases per operation and phase, past the coverage phase's own (about a minute a run)."""


def _merged(project: Project, changes: dict[str, dict[str, object]]) -> dict[str, object]:
    raw = {
        name: cfg.model_dump(mode="json", exclude_unset=True)
        for name, cfg in project.streams.items()
    }
    for name, extra in changes.items():
        raw[name] = {**raw[name], **extra}
    return raw


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_openapi_document_holds_for_generated_requests(
    make_project: Callable[..., Project],
    live_server: Callable[[Project], str],
    tmp_path: Path,
    auth: bool,
) -> None:
    changes: dict[str, object] = {"server": {"reload_interval": 0}}
    if auth:
        scopes = ["predict", "ingest", "admin"]
        changes["server"] = {
            "reload_interval": 0,
            "api_keys": [{"name": "fuzz", "key": KEY, "scopes": scopes}],
        }
    project = make_project(changes, request_features=REQUEST_FEATURES)
    # A field's limit is in bytes, the schema's maxLength in characters: at 16 KiB the fuzzer's
    # strings stay clear of that difference, and the boundary cases are ASCII.
    streams = {"transactions": {"max_field_size": "16KiB"}}
    project = make_project(
        {**changes, "streams": _merged(project, streams)}, request_features=REQUEST_FEATURES
    )
    (project.base_dir / "data" / "transactions").mkdir(
        parents=True, exist_ok=True
    )  # ingest appends here
    url = live_server(project)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG + (AUTH if auth else ""))
    here = Path(__file__).parent
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "openapi_fuzz_hooks",
        "PYTHONPATH": os.pathsep.join([str(here), *sys.path]),
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--generation-database",
        "none",
        # Hypothesis gives up on an operation when most of its drawn examples are filtered
        # out; for the V2 infer body (recursive tensor data) some seeds get there (seen:
        # 243003742128823859898017441625785605479). It stops generating, it checks nothing
        # less: the examples that are drawn are all sent and checked.
        "--suppress-health-check",
        "filter_too_much",
        "--output-sanitize",
        "false",
        "--no-color",
    ]
    if seed := os.environ.get("HYBRIDSERVE_FUZZ_SEED"):
        command += ["--seed", seed]
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected is not None, report
    assert len(set(selected.groups())) == 1, f"not every operation was tested:\n{report}"
    generated = re.search(r"(\d+) generated", report)
    assert generated is not None and int(generated.group(1)) >= 500, report
