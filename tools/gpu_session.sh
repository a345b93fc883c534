#!/usr/bin/env bash
# A GPU session's checks in one call (BENCHMARKS.md, "Runbook for a GPU session"): bench.py's peaks, gpt2's training
# rows and generation, batch 16, activation recomputation, the CUDA tests, and a short train.py + gen.py run.
# Run from the repository root on the GPU machine:
#
#     OUT=/some/folder bash tools/gpu_session.sh          # the device tool sets $OUT to the folder that comes back
#
# A session is short (15 minutes of device time, all tries together; 10 minutes a command), so each step has its own
# time limit, the most important first, together 580 s, and writes its log under $OUT as it goes: a session cut off
# still returns the steps that ran. steps.log says what each step ran, its exit status and seconds; bench.md collects
# bench.py's tables, for BENCHMARKS.md. Needs TIKTOKEN_CACHE_DIR (default .dev/tiktoken-cache: carry a copy of
# ../shared/tiktoken-cache there) and, for the train.py step, data/story (carry it, or the step is skipped).
# DEVICE=cpu QUICK=1 tries the script itself on a CPU (tiny sizes; about 4 minutes on 2 cores, compiling).
set -u
OUT=${OUT:-gpu-session}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.dev/tiktoken-cache} HF_DATASETS_OFFLINE=1
quick=()
if [ -n "${QUICK:-}" ]; then quick=(--quick); fi

step() {  # step NAME SECONDS COMMAND...: the command's output in $OUT/NAME.log, its status in steps.log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name: $*" >> "$OUT/steps.log"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: rc $rc in $((SECONDS - start)) s" | tee -a "$OUT/steps.log"
    tail -n 4 "$OUT/$name.log"
}

bench=("$PY" bench.py --device "$DEVICE" --compile --out "$OUT/bench.md" "${quick[@]}")
step machine 20 bash -c "nvidia-smi || lscpu; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda)'"
# issue 6's GPU target: gpt2 at block 1024, bf16, compiled, flash attention, 50% MFU; both optimizers
step bench 240 "${bench[@]}" --optimizer adamw,muon
step bench-b16 90 "${bench[@]}" --optimizer adamw --only train --batch_size 16
# the memory target's option: peak memory with and without recomputation
step recompute 90 "${bench[@]}" --optimizer adamw --only train --recompute_activations
step tests 60 "$PY" -m pytest -q -k "cuda or gpus" tests/test_bench.py tests/test_model.py tests/test_ddp.py
if [ -f data/story/meta.json ]; then
    steps=200
    if [ -n "${QUICK:-}" ]; then steps=5; fi
    step train 60 "$PY" train.py --dataset story --device "$DEVICE" --compile --max_steps "$steps" --overwrite \
        --output_checkpoint "$OUT/story.pt"
    step gen 20 "$PY" gen.py "$OUT/story.pt" --device "$DEVICE" --prompt "Once upon a time" --max_tokens 100 --seed 1
    rm -f "$OUT"/*.pt  # (too large to come back)
else
    echo "== train, gen: skipped (no data/story: carry it)" | tee -a "$OUT/steps.log"
fi
