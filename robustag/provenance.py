"""Provenance stored with every unit: where and how it ran, with which code."""

from __future__ import annotations

import functools
import hashlib
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

    return {"robustag": __version__, "robustag source": source_digest(), "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


@functools.cache
def source_digest() -> str:
    """A digest of robustag's own source as this process loaded it (core, models, built-in
    attacks and defenses): it names the code behind a cell for any install — a wheel, a frozen
    copy, a checkout with uncommitted edits — where `git` gives the last commit, or nothing."""
    import robustag
    import robustag.attacks
    import robustag.defenses
    import robustag.models

    digest = hashlib.sha256()
    for package in (robustag, robustag.models, robustag.attacks, robustag.defenses):
        for folder in package.__path__:
            for path in sorted(Path(folder).glob("*.py")):
                digest.update(f"{package.__name__}/{path.name}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def git_revision() -> str:
    """The commit of the code this process loaded (asked once: a run outlives later commits)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

