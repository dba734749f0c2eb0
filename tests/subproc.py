"""Waiting on real child processes in crash and concurrency tests."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest


def finish(proc: subprocess.Popen, timeout: float = 60, what: str = "the process") -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``proc``; fails the test if it does not end in ``timeout`` s."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 30, what: str = "the process") -> None:
    """Wait until ``proc`` creates ``marker``; fails the test if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            code, out, err = finish(proc, what=what)
            pytest.fail(f"{what} exited ({code}) before reaching the marker:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            finish(proc, what=what)
            pytest.fail(f"{what} never reached the marker")
        time.sleep(0.02)
