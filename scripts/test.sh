#!/usr/bin/env bash
# Install everything the test suite needs (system libraries for Qt under Xvfb,
# the package with its test extra) and run the whole suite.
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

python3 -m pip install -q -e ".[test]"
# No network at test time: models are built with encoder_weights=None.
export HF_HUB_OFFLINE=1
python3 -m pytest -q "$@"
