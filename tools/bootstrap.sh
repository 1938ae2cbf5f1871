#!/usr/bin/env bash
# Create .venv with everything ecmt needs, from this repository's own files.
# Idempotent: re-running it only installs what changed.  Used by the Makefile
# (and so by README's two commands) and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Fashion-MNIST ships as a Debian package; install it when we may.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian's dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "bootstrap: Fashion-MNIST is missing; run 'sudo apt-get install dataset-fashion-mnist'" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Lava's published wheels do not install on Python 3.11; build fixed ones
# (tools/lava_wheels.py says what it changes and why).
"$VENV/bin/python" tools/lava_wheels.py --out .cache/lava-wheels >/dev/null

"${PIP[@]}" install -q -c constraints.txt -e '.[dev]' \
  .cache/lava-wheels/lava_nc-0.10.0-py3-none-any.whl \
  .cache/lava-wheels/lava_dl-0.6.0-py3-none-any.whl 2>&1 | grep -v "is ignored: it is neither" || true
# Same version numbers, possibly a new rewrite: make sure the installed Lava is this one.
"${PIP[@]}" install -q --no-deps --force-reinstall \
  .cache/lava-wheels/lava_nc-0.10.0-py3-none-any.whl \
  .cache/lava-wheels/lava_dl-0.6.0-py3-none-any.whl 2>&1 | grep -v "is ignored: it is neither" || true
"${PIP[@]}" check
# The fast step's C kernels (ecmt/runtime/native.c): built once here, not during the first run.
"$VENV/bin/python" -c "from ecmt.runtime import native; print('bootstrap:', native.build_report())"
touch "$VENV/.bootstrapped"
