#!/usr/bin/env bash
# Install everything the test suite needs, as a user installs napari-mtunet, and run the whole suite.
#
#   bash scripts/test.sh                  # the README's command: works on a fresh machine
#   bash scripts/test.sh -m "not slow"    # arguments go to pytest
#
# 1. System libraries for Qt under Xvfb (apt-get, where there is one).
# 2. A virtual environment: MTUNET_TEST_VENV if set (created if missing; .ci/run passes a new one,
#    so CI sees what a new user gets), else the active one ($VIRTUAL_ENV), else ./.venv
#    (created on first use; never the system Python).
# 3. pip install -e ".[test]" into it: the versions pip resolves today, within pyproject.toml's ranges.
# 4. pytest, offline (tests never download).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  # Xvfb + the xcb/GL libraries Qt6 needs to draw napari layers headless.
  pkgs="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
        libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-shape0 libgl1 libegl1 \
        libdbus-1-3 libfontconfig1"
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

if [ -n "${MTUNET_TEST_VENV:-}" ]; then
  VENV="$MTUNET_TEST_VENV"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV="$VIRTUAL_ENV"
else
  VENV=".venv"
fi
py() { if [ -x "$VENV/bin/python" ]; then echo "$VENV/bin/python"; else echo "$VENV/Scripts/python.exe"; fi; }
if [ ! -x "$(py)" ]; then
  echo "creating the virtual environment $VENV"
  python3 -m venv "$VENV" || {
    echo "python3 -m venv failed: install Python's venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
fi
PY="$(py)"
echo "installing napari-mtunet[test] into $VENV ($("$PY" --version))"
t0=$(date +%s)
"$PY" -m pip install -q -e ".[test]"
echo "installed in $(( $(date +%s) - t0 )) s: $("$PY" -m pip list --format=freeze 2>/dev/null \
  | grep -i -E '^(torch|torchvision|numpy|pydantic|bioimageio.core|napari|onnxruntime)==' | tr '\n' ' ')"
# No network at test time: models are built with encoder_weights=None or the packaged Lite0 weights.
export HF_HUB_OFFLINE=1
exec "$PY" -m pytest -q "$@"
