#!/usr/bin/env bash
# Install the peers that benchmarks/peers/run.py compares ringdist with, into a virtualenv of
# their own (ringdist itself is not installed there: run.py runs it with RINGDIST_PYTHON).
# Safe to run again: it installs only what is missing.
#
#   VENV    the peers' virtualenv (default /tmp/peers-venv)
#   PYTHON  the interpreter that makes it (default python3)
#   SKIP    space-separated parts not to install: apt mpi torch mlx
#
# Versions are the ones the published tables were measured with. torch is installed only as
# the CPU build 2.13.0+cpu, which must be findable by pip (a local wheel in pip's find-links);
# without it torch is left out, never replaced by another build (the default one pulls in
# gigabytes of CUDA libraries).
set -uo pipefail
VENV=${VENV:-/tmp/peers-venv}
PYTHON=${PYTHON:-python3}
SKIP=" ${SKIP:-} "
NUMPY=numpy==2.4.6
MPI4PY=mpi4py==4.1.2
MLX="mlx[cpu]==0.32.4"
TORCH=torch==2.13.0+cpu
failed=()

wanted() { [[ "$SKIP" != *" $1 "* ]]; }

if wanted apt; then
  missing=()
  for pkg in openmpi-bin libopenmpi-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      failed+=("apt: ${missing[*]}")
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: making $VENV"
  "$PYTHON" -m venv "$VENV" || { echo "setup: cannot make the virtualenv $VENV" >&2; exit 1; }
fi
pip_install() {  # what, then pip arguments
  local what=$1; shift
  echo "setup: pip install $*"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" || failed+=("$what")
}

pip_install numpy "$NUMPY"
if wanted mpi; then
  if command -v mpicc >/dev/null 2>&1; then
    pip_install mpi4py "$MPI4PY"
  else
    failed+=("mpi4py: no mpicc (apt-get install libopenmpi-dev)")
  fi
fi
wanted mlx && pip_install mlx "$MLX"
# the +cpu local version matches only a CPU build: when pip cannot find one, torch is left out
wanted torch && pip_install torch "$TORCH"

echo "setup: installed in $VENV:"
"$VENV/bin/python" - <<'PY'
import importlib

for name, probe in (("numpy", "numpy"), ("mpi4py", "mpi4py.MPI"), ("mlx", "mlx.core"), ("torch", "torch.distributed")):
    try:
        module = importlib.import_module(probe)
        version = getattr(module, "__version__", None) or getattr(importlib.import_module(name), "__version__", "?")
        print(f"  {name} {version}")
    except Exception as exc:  # report every peer, whatever its import raises
        print(f"  {name}: not importable ({type(exc).__name__}: {exc})")
PY
command -v mpirun >/dev/null 2>&1 && echo "  $(mpirun --version 2>/dev/null | head -1)"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'setup: not installed: %s\n' "${failed[@]}" >&2
  exit 1
fi
