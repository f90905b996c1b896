"""The command line's allocator setting (src/actdistill/allocator.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHILD = """
from actdistill.allocator import tune_allocator
first = tune_allocator()
print(first, tune_allocator() is first)
"""


def _run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_set_once_and_can_be_declined() -> None:
    assert _run({"ACTDISTILL_MALLOC": ""}) == "True True"
    assert _run({"ACTDISTILL_MALLOC": "system"}) == "False True"


def test_cli_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import actdistill.allocator as allocator
    from actdistill.cli import main

    calls: list[int] = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda: calls.append(1) or True)
    assert main(["data", "list"]) == 0
    assert calls == [1]
