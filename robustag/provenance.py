"""Provenance stored with every unit: where and how it ran, with which code."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

from robustag.version import __version__


def run_info(device: str, compiled: bool = False) -> dict:
    """How a unit ran, stored with its cells; compiled training matches eager only to rounding
    (popularity models train nothing, so nothing of theirs is ever compiled)."""
    return {"device": f"{device}+compile" if compiled else device, "versions": versions(), "git": git_revision()}


@functools.cache
def versions() -> dict[str, str]:
    import numpy
    import platform

    return {"robustag": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


@functools.cache
def git_revision() -> str:
    """The commit of the code this process loaded (asked once: a run outlives later commits)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

