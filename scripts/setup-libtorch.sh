#!/usr/bin/env bash
# Installs libtorch 2.11.0 (from the PyPI wheel torch==2.11.0) into a cache outside the checkout,
# once. Idempotent: a completed install is recognised by its stamp file and version check.
#
#   PRISM_CACHE   where the cache lives (default: ${XDG_CACHE_HOME:-$HOME/.cache}/prism)
#   PRISM_PYTHON  the Python used to create the venv (default: python3)
#
# Prints the libtorch directory (the value for LIBTORCH) on its last line.
set -euo pipefail

TORCH_VERSION=2.11.0
cache="${PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prism}"
venv="$cache/torch-$TORCH_VERSION"
py="${PRISM_PYTHON:-python3}"
stamp="$venv/.prism-complete"

log() { printf 'setup-libtorch: %s\n' "$*" >&2; }

torch_dir() {
  local d
  d=$(ls -d "$venv"/lib/python3*/site-packages/torch 2>/dev/null | head -n 1)
  [ -n "$d" ] && [ -f "$d/lib/libtorch_cpu.so" ] && printf '%s\n' "$d"
}

installed_version() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m
print(m.version("torch"))
PY
}

if [ -f "$stamp" ] && [ -n "$(torch_dir)" ] && [ "$(installed_version)" = "$TORCH_VERSION" ]; then
  :
else
  command -v "$py" >/dev/null || { log "no $py found: install Python 3.10+ with venv and pip"; exit 1; }
  log "installing torch==$TORCH_VERSION into $venv (about 4.6 GB, once)"
  mkdir -p "$cache"
  # Build in a temporary folder and move it into place, so an interrupted install leaves nothing
  # that looks complete.
  tmp="$venv.partial.$$"
  rm -rf "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  rm -rf "$venv"
  mv "$tmp" "$venv"
  trap - EXIT
  # A venv moved after creation keeps its old paths in scripts; pip and python still work
  # through "$venv/bin/python -m", which is all we use.
  got=$(installed_version || true)
  [ "$got" = "$TORCH_VERSION" ] || { log "expected torch $TORCH_VERSION, found '${got:-none}'"; exit 1; }
  [ -n "$(torch_dir)" ] || { log "torch installed but libtorch_cpu.so is missing under $venv"; exit 1; }
  touch "$stamp"
fi

torch_dir
