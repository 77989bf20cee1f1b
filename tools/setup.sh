#!/usr/bin/env bash
# Set up gpm_nb from nothing: a virtual environment in .venv with the package and its dev tools.
#   bash tools/setup.sh          # library, notebooks (jupyter), console scripts
#   bash tools/setup.sh --test   # the same, plus Debian's chromium for the documentation-site test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned exactly: a range would let pip pick a CUDA build with gigabytes of extras.
.venv/bin/pip install --disable-pip-version-check -q "torch==2.13.0"
.venv/bin/pip install --disable-pip-version-check -q -e ".[dev]"
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "gpm_nb is set up in .venv"
