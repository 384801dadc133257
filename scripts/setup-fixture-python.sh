#!/usr/bin/env bash
# Installs the Python packages that regenerate the reference fixtures in tests/fixtures/
# (transformers, verl, ...) into the libtorch venv. Only `make fixtures` needs this: the tests
# read the committed outputs and never run Python. Prints the venv's python on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
torch_dir=$(bash "$here/setup-libtorch.sh" | tail -n 1)
venv=$(cd "$torch_dir/../../../.." && pwd)
req="$here/../tests/fixtures/requirements.txt"
stamp="$venv/.prism-fixtures-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  if [ -f "$here/../tests/fixtures/requirements-nodeps.txt" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      -r "$here/../tests/fixtures/requirements-nodeps.txt"
  fi
  touch "$stamp"
fi
printf '%s\n' "$venv/bin/python"
