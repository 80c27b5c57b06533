"""Session set-up for the suite."""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config) -> None:
    """Compile the package's modules once, before the tests start: the suite starts thousands of
    Python processes (ranks, launchers), and where bytecode is not written as modules are
    imported (PYTHONDONTWRITEBYTECODE, as some CI images set) each would compile them again
    (about a third of an import of ringdist). xdist's workers leave it to the controller."""
    if hasattr(config, "workerinput"):
        return
    for folder in ("ringdist", "launcher", "benchmarks"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    compileall.compile_dir(ROOT / "tests", maxlevels=0, quiet=1)
