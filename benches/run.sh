#!/usr/bin/env bash
# `make bench`: runs every benchmark program in release mode on this machine and writes what they
# print to target/bench-results/ (one file per benchmark) and to stdout. Numbers for
# BENCHMARKS.md come from here, with the machine (`nproc`, CPU model) printed first.
#
#   PRISM_BENCH_THREADS   libtorch intra-op threads for model benchmarks (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH="${LIBTORCH:-$(bash scripts/setup-libtorch.sh | tail -n 1)}"
export PRISM_BENCH_THREADS="${PRISM_BENCH_THREADS:-2}"
out=target/bench-results
mkdir -p "$out"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)"

run() {  # run NAME CMD...: print and save one benchmark's output
  local name=$1; shift
  echo "== $name"
  "$@" 2>&1 | tee "$out/$name.txt"
}

for b in reward synth overlap; do
  run "$b" cargo bench --quiet --bench "$b"
done

if [ -f benches/generate.rs ]; then
  py=$(bash scripts/setup-fixture-python.sh | tail -n 1)
  cache="${PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prism}"
  model="$cache/bench/qwen3vl-100m"
  mkdir -p "$cache/bench"
  run torch_reference "$py" benches/torch_reference.py --model-dir "$model" --threads "$PRISM_BENCH_THREADS"
  run generate_tiny env PRISM_BENCH_MODEL_DIR=tests/fixtures/qwen3_vl/tiny-qwen3-vl \
    cargo bench --quiet --bench generate
  run generate_100m env PRISM_BENCH_MODEL_DIR="$model" cargo bench --quiet --bench generate
fi
echo "results in $out/"
