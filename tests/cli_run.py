"""Run the ``hybridserve`` command in this process (no interpreter start per call): its exit
code and what it printed, as :func:`hybridserve.cli.main` gives them to a user."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from unittest import mock

import pytest

from hybridserve.cli import main


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def hs(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    capsys.readouterr()
    code = 0
    with mock.patch.object(sys, "argv", ["hybridserve", *args]):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)
