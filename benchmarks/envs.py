"""Isolated virtual environments for the peer loaders of the loader benchmark.

Each peer library runs in a venv of its own under ``benchmarks/.envs/<name>/`` so that, e.g., the
old ``streaming-wds`` release from PyPI does not clash with this checkout. ``ENVS`` maps an env
name to its pip requirements; every install is constrained by ``.ci/constraints.txt`` (which pins
torch to the local CPU wheel). A stamp file holding the requirement list marks a finished
install, so an env is only rebuilt when its requirements change.

    python benchmarks/envs.py            # build every env
    python benchmarks/envs.py wds litdata

Stdlib only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = ROOT / "benchmarks" / ".envs"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
BASE = ["torch==2.13.0", "boto3", "pillow", "numpy"]

ENVS: dict[str, list[str]] = {
    "wds": ["webdataset==1.0.2", *BASE],
    "swds01": ["streaming-wds==0.1.28", *BASE],
    "mosaic": ["mosaicml-streaming==0.13.0", *BASE],
    "litdata": ["litdata==0.2.76", *BASE],
}


class EnvError(RuntimeError):
    """An env could not be created or its requirements could not be installed."""


def python_of(name: str) -> Path:
    """The python executable of env ``name`` (which may not exist yet)."""
    return ENVS_DIR / name / "bin" / "python"


def _stamp_text(name: str) -> str:
    return json.dumps({"requirements": ENVS[name], "constraints": CONSTRAINTS.read_text()}, indent=1)


def is_ready(name: str) -> bool:
    """Whether env ``name`` exists and was installed with its current requirements."""
    stamp = ENVS_DIR / name / ".installed"
    return python_of(name).exists() and stamp.exists() and stamp.read_text() == _stamp_text(name)


def ensure_env(name: str, quiet: bool = True) -> Path:
    """Create or update env ``name``; return its python. Raises ``EnvError`` (with pip's tail) on failure."""
    if name not in ENVS:
        raise EnvError(f"unknown env {name!r}; known: {', '.join(ENVS)}")
    py = python_of(name)
    if is_ready(name):
        return py
    env_dir = ENVS_DIR / name
    stamp = env_dir / ".installed"
    stamp.unlink(missing_ok=True)
    steps = []
    if not py.exists():
        steps.append([sys.executable, "-m", "venv", "--clear", str(env_dir)])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    steps.append([*pip, "-c", str(CONSTRAINTS), *ENVS[name]])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).splitlines()[-15:])
            raise EnvError(f"env {name!r}: `{' '.join(cmd[:4])} ...` failed ({proc.returncode}):\n{tail}")
    stamp.write_text(_stamp_text(name))
    return py


def remove_env(name: str) -> None:
    """Delete env ``name`` entirely."""
    shutil.rmtree(ENVS_DIR / name, ignore_errors=True)


def main(argv: list[str]) -> int:
    names = argv or list(ENVS)
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            py = ensure_env(name, quiet=False)
        except EnvError as e:
            failed += 1
            print(f"[envs] {name}: FAILED after {time.perf_counter() - t0:.0f}s\n{e}")
        else:
            print(f"[envs] {name}: ready in {time.perf_counter() - t0:.0f}s -> {py}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
