"""Tests that start hvdkit's command line (and so real launchers) from one
pytest process. Every subprocess runs under a timeout, so a hang fails."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_hvdkit(args, timeout=120, env=None, **kwargs):
    """Run ``python -m hvdkit ARGS`` and return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hvdkit", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=kwargs.pop("cwd", REPO), **kwargs)


@pytest.fixture
def hvdkit_cli():
    return run_hvdkit
