#!/usr/bin/env bash
# Build the virtual environments in which the field's NIR consumer libraries read
# ecmt's NIR files: tools/nir_consumer_run.py runs inside them (it never imports ecmt).
#
#   tools/nir_consumers.sh [ENV ...]       build (or check) the envs; default: all
#   tools/nir_consumers.sh --python NAME   print the interpreter for a consumer
#                                          (snntorch, norse, nirtorch, sinabs) or env
#   tools/nir_consumers.sh --list          consumer -> env table
#
# Envs live in .cache/nir-consumers/<env>/ (git-ignored).  Why separate envs, and not
# the project venv:
#   * sinabs 3.1.3 declares nir<=1.0.4 (and so needs nirtorch 2.0.2, the newest that
#     does not declare nir>=1.0.6), while ecmt writes and checks its files with
#     nir 1.0.8: the two cannot share one environment;
#   * the consumers must read the files as shipped, with their own pinned nir, and the
#     runner must not be able to import ecmt by accident;
#   * the project venv stays exactly what constraints.txt says.
# snnTorch 1.0.0 and Norse 1.1.0 accept nir 1.0.8 + nirtorch 2.6 (the project's
# versions), so they share one env, where the plain nirtorch consumer runs too.
#
# torch is a CPU build, not the project's CUDA one: the consumers run small files on
# the CPU, and the project's torch 2.14.1 would pull about 5 GB of CUDA wheels into each
# env.  The CPU wheel torch 2.13.0+cpu lies in $TORCH_WHEELS (default /opt/wheels) on
# every machine of this kind; each env pins it (and Norse's torchvision 0.28.0, which
# declares torch==2.13.0) in its block of tools/nir_consumers.txt.  The rest comes from
# constraints.txt (numpy, h5py, matplotlib, ... exactly as in the project venv) minus
# its torch, CUDA and nir / nirtorch lines, which the blocks pin themselves.
#
# Idempotent and fast on re-run: an env whose stamp (.cache/nir-consumers/<env>/.stamp)
# matches the hash of this script, constraints.txt and its block is left alone.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."

PYTHON=${PYTHON:-python3}
ROOT=.cache/nir-consumers
PINS=tools/nir_consumers.txt
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
ALL_ENVS=(snntorch-norse sinabs)

# What each env installs (versions come from the constraint files).
packages() {
  case "$1" in
    snntorch-norse) echo "snntorch norse nirtorch nir torch torchvision numpy h5py" ;;
    sinabs)         echo "sinabs nirtorch nir torch numpy h5py" ;;
    *) echo "nir_consumers: unknown env '$1' (known: ${ALL_ENVS[*]})" >&2; return 2 ;;
  esac
}
# Modules that must import once the env is built.
smoke() {
  case "$1" in
    snntorch-norse) echo "import nir, nirtorch, snntorch.import_nir, norse.torch; norse.torch.from_nir" ;;
    sinabs)         echo "import nir, nirtorch, sinabs, sinabs.nir; sinabs.from_nir" ;;
  esac
}
env_of() {
  case "$1" in
    snntorch|norse|nirtorch|snntorch-norse) echo snntorch-norse ;;
    sinabs) echo sinabs ;;
    *) echo "nir_consumers: unknown consumer '$1' (snntorch, norse, nirtorch, sinabs)" >&2; return 2 ;;
  esac
}

case "${1:-}" in
  --python) env=$(env_of "${2:?usage: $0 --python CONSUMER}"); echo "$PWD/$ROOT/$env/bin/python"; exit 0 ;;
  --list)
    for c in snntorch norse nirtorch sinabs; do echo "$c $PWD/$ROOT/$(env_of $c)/bin/python"; done; exit 0 ;;
  -h|--help) sed -n '2,9p' "$SELF"; exit 0 ;;
esac

# The block "# [env]" ... of tools/nir_consumers.txt, as a pip constraints file.
block() {
  awk -v want="# [$1]" '
    /^# \[.*\]$/ { inside = ($0 == want); next }
    inside && !/^#/ && NF { print }' "$PINS"
}

build() {
  local env=$1 dir=$ROOT/$1 start=$SECONDS
  packages "$env" >/dev/null
  local pins; pins=$(block "$env")
  [ -n "$pins" ] || { echo "nir_consumers: no block '# [$env]' in $PINS" >&2; return 2; }
  local stamp
  stamp=$( { cat "$SELF" constraints.txt; echo "$pins"; "$PYTHON" --version; } | sha256sum | cut -d' ' -f1)
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "nir_consumers: $env up to date ($dir)"
    return 0
  fi
  echo "nir_consumers: building $env in $dir"
  rm -f "$dir/.stamp"
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
  # constraints.txt without torch, its CUDA wheels and nir / nirtorch (each env pins its
  # own), then the env's block.
  grep -viE '^(nir|nirtorch|torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' constraints.txt \
    > "$dir/constraints-base.txt"
  echo "$pins" > "$dir/constraints-env.txt"
  local pip=("$dir/bin/python" -m pip --disable-pip-version-check)
  # --no-compile: torch's .py files are byte-compiled lazily on first import instead
  # (saves most of a minute per env on 2 cores).
  # shellcheck disable=SC2046
  if ! "${pip[@]}" install -q --no-compile --find-links "$TORCH_WHEELS" -c "$dir/constraints-base.txt" -c "$dir/constraints-env.txt" \
      $(packages "$env") > "$dir/pip.log" 2>&1; then
    grep -v "is ignored: it is neither" "$dir/pip.log" >&2
    echo "nir_consumers: pip install failed for $env (log: $dir/pip.log)" >&2
    return 1
  fi
  grep -v "is ignored: it is neither" "$dir/pip.log" || true
  "${pip[@]}" check
  if "${pip[@]}" freeze --all | grep -qiE '^(nvidia-|cuda-|triton==)'; then
    echo "nir_consumers: $env pulled CUDA wheels (log: $dir/pip.log)" >&2
    return 1
  fi
  OMP_NUM_THREADS=1 "$dir/bin/python" -W ignore -c "$(smoke "$env")"
  "${pip[@]}" freeze --all > "$dir/freeze.txt"
  echo "$stamp" > "$dir/.stamp"
  echo "nir_consumers: $env built in $((SECONDS - start)) s"
}

envs=("$@")
[ ${#envs[@]} -gt 0 ] || envs=("${ALL_ENVS[@]}")
mkdir -p "$ROOT"
for e in "${envs[@]}"; do
  build "$e"
done
