#!/usr/bin/env bash
# Checks prism on a CUDA machine, in one pass, and writes what it saw to OUT_DIR:
#   1. doctor.txt     `prism doctor`: libtorch must see the GPU (the run stops here otherwise);
#   2. bench-*.txt    throughput on the GPU against PyTorch on the same weights and batch:
#                     SFT training steps (benches/sft.rs vs benches/sft_reference.py) and greedy
#                     generation (benches/generate.rs vs transformers' generate()) on a seeded
#                     random 142M Qwen3-VL that benches/torch_reference.py builds;
#   3. pipeline.txt   the quickstart pipeline (SFT, warm-up, PRISM alignment, RLVR, evals) with
#                     every stage and actor on the GPU (two generator replicas, learner, both
#                     experts), its results table, peak GPU memory and a Prometheus scrape taken
#                     while it ran (metrics.txt).
#
#   scripts/gpu-check.sh [OUT_DIR]          (default: target/gpu-check)
#
# Environment:
#   PRISM_BIN          the prism binary (default: target/release/prism, from `make release`)
#   PRISM_BENCH_BINS   a folder holding the release `sft` and `generate` bench programs (default:
#                      the newest ones under target/release/deps, from `cargo bench --no-run`)
#   PRISM_PYTHON       a Python with torch 2.11 and transformers (default: python3)
#   PRISM_DEVICE       the device (default cuda:0)
#   PRISM_PIPELINE_TIMEOUT  seconds the pipeline may run (default 330)
#   PRISM_SKIP_BENCH   set: skip the throughput part
#   PRISM_EXTRA_SETS   more `--set key=value` arguments for the pipeline (e.g. fewer steps)
# A binary built on another machine finds libtorch through LD_LIBRARY_PATH, which this script
# points at the Python's torch/lib when the binary's own libtorch path is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu-check}
mkdir -p "$out"
bin=${PRISM_BIN:-target/release/prism}
py=${PRISM_PYTHON:-python3}
dev=${PRISM_DEVICE:-cuda:0}
log() { printf '== %s\n' "$*" | tee -a "$out/summary.txt"; }

torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$bin" doctor 2>&1 | tee "$out/doctor.txt"
if [[ $dev == cuda* ]] && ! grep -q '^cuda available true' "$out/doctor.txt"; then
  log "FAIL: libtorch does not see a GPU (doctor.txt)"
  exit 1
fi

# --- throughput against PyTorch on the same GPU -------------------------------------------------
if [ -z "${PRISM_SKIP_BENCH:-}" ]; then
bins=${PRISM_BENCH_BINS:-}
newest() { ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -n 1; }
sft_bin=${bins:+$bins/sft}
sft_bin=${sft_bin:-$(newest sft)}
gen_bin=${bins:+$bins/generate}
gen_bin=${gen_bin:-$(newest generate)}
model=$out/qwen3vl-142m
log "building the 142M random Qwen3-VL"
"$py" benches/torch_reference.py --model-dir "$model" --build-only 2>&1 | tail -n 3
export PRISM_BENCH_DEVICE=$dev PRISM_BENCH_THREADS=${PRISM_BENCH_THREADS:-8}
if [ -x "$sft_bin" ]; then
  log "SFT step throughput, prism vs PyTorch eager, $dev, fp32"
  PRISM_BENCH_SFT_BATCHES=${PRISM_BENCH_SFT_BATCHES:-4,16} PRISM_BENCH_SFT_SEQ=${PRISM_BENCH_SFT_SEQ:-512} \
    PRISM_BENCH_SFT_STEPS=5 "$sft_bin" "$model" --batch-dir "$out" >"$out/bench-sft-prism.txt" 2>&1
  "$py" benches/sft_reference.py --model-dir "$model" --prism-json "$out/bench-sft-prism.txt" \
    2>&1 | tee "$out/bench-sft.txt" | tail -n 12
else
  log "no sft bench program (build it with: cargo bench --bench sft --no-run)"
fi
if [ -x "$gen_bin" ]; then
  log "greedy generation, prism (sdpa and eager) vs transformers generate() (eager), $dev"
  for attn in sdpa eager; do
    PRISM_BENCH_ATTN=$attn "$gen_bin" "$model" 2>&1 | tee "$out/bench-generate-$attn.txt"
  done
  "$py" benches/torch_reference.py --model-dir "$model" --threads "$PRISM_BENCH_THREADS" \
    --device "$dev" 2>&1 | tee "$out/bench-torch.txt"
else
  log "no generate bench program (build it with: cargo bench --bench generate --no-run)"
fi
rm -f "$out"/sft_batch_*.safetensors
fi

# --- the quickstart pipeline with every stage and actor on the GPU ------------------------------
log "quickstart pipeline on $dev"
run_dir=$out/quickstart
sets=(--set "run.device=\"$dev\"" --set run.threads=8
  --set "actors.placement.generators=[\"$dev\", \"$dev\"]"
  --set "actors.placement.learner=\"$dev\""
  --set "actors.placement.perception_expert=\"$dev\""
  --set "actors.placement.reasoning_expert=\"$dev\"")
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -l 1 >"$out/gpu-mem.txt" 2>/dev/null &
smi=$!
start=$(date +%s)
timeout "${PRISM_PIPELINE_TIMEOUT:-330}" "$bin" run configs/quickstart.toml \
  --out "$run_dir" --metrics-addr 127.0.0.1:9464 "${sets[@]}" ${PRISM_EXTRA_SETS:-} \
  >"$out/pipeline.txt" 2>&1 &
run=$!
while kill -0 "$run" 2>/dev/null; do
  sleep 5
  # keep the newest scrape that has RL metrics in it
  if m=$(curl -sf 127.0.0.1:9464/metrics 2>/dev/null) && grep -q '^prism_reward' <<<"$m"; then
    printf '%s\n' "$m" >"$out/metrics.txt"
  fi
done
wait "$run"
rc=$?
kill "$smi" 2>/dev/null
log "pipeline exit $rc after $(($(date +%s) - start)) s; peak GPU memory $(sort -n "$out/gpu-mem.txt" | tail -n 1) MiB"
tail -n 30 "$out/pipeline.txt"
cp "$run_dir/results.md" "$out/results.md" 2>/dev/null
grep -E '^prism_(reward|caption_score|reasoning_score|discriminator_loss|policy_loss)\{' "$out/metrics.txt" 2>/dev/null | head -n 12
exit "$rc"
