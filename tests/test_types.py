"""The type hints hold: mypy, with pyproject.toml's ``[tool.mypy]`` settings (the packages it checks,
annotated functions required, unused ignores reported), finds nothing in daemon, mailer and bench.

mypy runs as a command from the checkout's root, as a developer runs it (``.venv/bin/mypy``), with its
cache in the checkout's ``.mypy_cache``: a run after a small change reads most modules from there.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Only a bound that turns a hung checker into a failure: a cold check of every module takes 10-30 s of
# CPU, and several times that on a machine busy with the rest of the suite.
TIMEOUT = 600


def test_mypy_finds_nothing() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[test]' installs the version pyproject.toml pins")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    if checked.returncode != 0:
        pytest.fail(f"mypy (exit {checked.returncode}) reports:\n{checked.stdout}{checked.stderr}", pytrace=False)
