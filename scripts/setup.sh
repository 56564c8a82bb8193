#!/usr/bin/env bash
# Create .venv (when missing), install torch==2.13.0 through constraints.txt (so pip can never resolve a
# multi-GB CUDA build), install factorch with its dev extra, and install Debian's Fashion-MNIST when it is
# missing and apt is usable. Idempotent: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.factorch-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing torch==2.13.0 and factorch[dev] into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/t10k-images-idx3-ubyte.gz" ] && [ -z "${FACTORCH_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "setup: warning: could not install dataset-fashion-mnist with apt; set FACTORCH_DATA to the IDX files"
  else
    echo "setup: note: Fashion-MNIST not found at $data and apt is not usable; set FACTORCH_DATA"
  fi
fi
