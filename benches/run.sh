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

# Generation: prism (eager attention, as transformers is timed, and SDPA) against transformers'
# generate() on the same weights: the tiny fixture and a seeded random 142M Qwen3-VL that
# torch_reference.py builds into the bench cache. Also the PyTorch eager SFT loop.
py=$(bash scripts/setup-fixture-python.sh | tail -n 1)
cache="${PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prism}"
tiny=tests/fixtures/qwen3_vl/tiny-qwen3-vl
big="$cache/bench/qwen3vl-100m"
mkdir -p "$cache/bench"
run torch_reference_142m "$py" benches/torch_reference.py --model-dir "$big" --threads "$PRISM_BENCH_THREADS"
run torch_reference_tiny "$py" benches/torch_reference.py --model-dir "$tiny" --vocab 400 --threads "$PRISM_BENCH_THREADS"
for attn in eager sdpa; do
  run "generate_$attn" env PRISM_BENCH_ATTN=$attn cargo bench --quiet --bench generate -- "$tiny" "$big"
done
# prism serve over HTTP on the tiny fixture (CPU): requests/s and tokens/s at concurrency 1, 8, 32.
run serve cargo bench --quiet --bench serve -- "$tiny"
# SFT training throughput: prism's SFT step (benches/sft.rs) against a PyTorch eager loop with
# transformers + torch.optim.AdamW (benches/sft_reference.py) on the same batch (written by the Rust
# side), threads and settings, on the 142M model; prints a Markdown table.
run sft_prism cargo bench --quiet --bench sft -- "$big" --batch-dir "$out" && run sft "$py" benches/sft_reference.py --model-dir "$big" --prism-json "$out/sft_prism.txt"
echo "results in $out/"
