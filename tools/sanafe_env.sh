#!/usr/bin/env bash
# Build the virtual environment in which SANA-FE (Boyle et al., IEEE TCAD 2025) runs the
# networks that ecmt describes, to cross-check hw_sim's Loihi figures:
# tools/sanafe_run.py runs inside it (it never imports ecmt or torch).
#
#   tools/sanafe_env.sh            build (or check) the env
#   tools/sanafe_env.sh --python   print the env's interpreter
#
# The env lives in .cache/sanafe/ (git-ignored).  Why a separate env, and not the project
# venv:
#   * the sanafe wheel drops top-level src/, tests/, scripts/, docs/ and plugins/ folders
#     into site-packages, which would shadow or pollute the project's own imports;
#   * SANA-FE is GPL-3.0: it is installed from PyPI into this cache only, and nothing of it
#     (code, headers, architecture YAML) is copied into this repository;
#   * the project venv stays exactly what constraints.txt says.
#
# What it installs, pinned exactly (PINS below): sanafe (no hard dependencies; its Python
# API and C++ core are in the wheel) and PyYAML (the version constraints.txt pins: the
# runner reads the architecture's network-on-chip constants, which the Python API does not
# expose, from its YAML file).  No torch, numpy or pandas.
#
# Idempotent and fast on re-run: the env is left alone while its stamp
# (.cache/sanafe/.stamp) matches the hash of this script and the interpreter's version.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."

PYTHON=${PYTHON:-python3}
DIR=.cache/sanafe
PINS=(sanafe==2.2.9 PyYAML==6.0.4)
# Must import once the env is built: the C++ core, the Loihi description shipped in the
# wheel, and a one-neuron chip simulated for one step.
SMOKE='
import sanafe, yaml
arch = sanafe.load_loihi()
net = sanafe.Network()
g = net.create_neuron_group("g", 1, model_attributes={}, soma_hw_name="loihi_lif", default_synapse_hw_name="loihi_dense_synapse")
g.neurons[0].map_to_core(arch.tiles[0].cores[0])
chip = sanafe.SpikingChip(arch)
chip.load(net)
chip.sim(1)
'

case "${1:-}" in
  --python) echo "$PWD/$DIR/bin/python"; exit 0 ;;
  -h|--help) sed -n '2,9p' "$SELF"; exit 0 ;;
  "") ;;
  *) echo "sanafe_env: unknown argument '$1' (--python, --help)" >&2; exit 2 ;;
esac

start=$SECONDS
stamp=$( { cat "$SELF"; "$PYTHON" --version; } | sha256sum | cut -d' ' -f1)
if [ -x "$DIR/bin/python" ] && [ "$(cat "$DIR/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "sanafe_env: up to date ($DIR)"
  exit 0
fi
echo "sanafe_env: building $DIR"
mkdir -p "$(dirname "$DIR")"
rm -f "$DIR/.stamp"
[ -x "$DIR/bin/python" ] || "$PYTHON" -m venv "$DIR"
pip=("$DIR/bin/python" -m pip --disable-pip-version-check)
if ! "${pip[@]}" install -q --no-compile "${PINS[@]}" > "$DIR/pip.log" 2>&1; then
  cat "$DIR/pip.log" >&2
  echo "sanafe_env: pip install failed (log: $DIR/pip.log)" >&2
  exit 1
fi
"${pip[@]}" check
# Run the smoke test from an empty folder, so that nothing of this repository is imported.
(cd "$DIR" && OMP_NUM_THREADS=1 "$PWD/bin/python" -W ignore -c "$SMOKE" > smoke.log 2>&1) || {
  cat "$DIR/smoke.log" >&2; echo "sanafe_env: smoke test failed" >&2; exit 1; }
"${pip[@]}" freeze --all > "$DIR/freeze.txt"
echo "$stamp" > "$DIR/.stamp"
echo "sanafe_env: built in $((SECONDS - start)) s ($DIR)"
