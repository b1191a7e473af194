#!/usr/bin/env bash
# The default model's recipe on one CUDA GPU in a fixed wall-clock budget. The data come first
# from steps 1-2 of scripts/train_default_model.sh (SKIP_TRAIN=1 stops it there).
#
# Stages 1 and 2 of the shipped checkpoints/musegen-mix were these two calls on one H200 (stages
# 3 and 4, the CPU fine-tunes for the pinned infilling layout and General MIDI drums, are in its
# model card):
#   MINUTES=6 DROPOUT=0.05 RUN=runs/gpu1 OUT=runs/gpu1-ship bash scripts/train_default_model_gpu.sh
#   INIT=runs/gpu1-ship/musegen-mix LR=3e-4 MINUTES=3.2 DROPOUT=0.05 RUN=runs/gpu2 \
#     OUT=runs/gpu2-ship bash scripts/train_default_model_gpu.sh
#   cp runs/gpu2-ship/musegen-mix/{config.json,model.safetensors,loss.png} checkpoints/musegen-mix/
#
# A short probe run measures this machine's tokens/s; the main run then gets as many optimiser
# steps as fit in MINUTES, so its cosine schedule decays fully instead of being cut off. The
# lowest-validation-loss weights are shipped (float16, data and licences) to $OUT/musegen-mix.
# INIT=CHECKPOINT starts a second stage from those weights (fresh optimiser and schedule).
# INFILL_RATE (default 0.3) and PREFIX_DROP (default 0) set --infill-rate and
# --infill-prefix-drop; INFILL_MEMORY=1 adds --infill-memory (the pinned layout: the right side
# stays visible beyond the 512-token window instead of displacing the left side). Stage 3's hour
# of it on a CPU made the right side lower the span's NLL in 73 % of test pieces, but the filled
# bars are still no closer to the real ones than a left-only continuation, so the next GPU stage
# is INIT=checkpoints/musegen-mix INFILL_MEMORY=1 INFILL_RATE=0.5 PREFIX_DROP=0.25 LR=3e-4,
# checked with benchmarks/bench_infill.py --pieces 12 --samples 3 --training-layout 40.
# DEVICE=cpu with a tiny shape and MINUTES checks the script on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/prepared_mix}
RUN=${RUN:-runs/mix-gpu}
OUT=${OUT:-runs/mix-gpu-ship}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
PROBE_STEPS=${PROBE_STEPS:-30}
SEQ=2048
PY=${PYTHON:-python3}
INIT=(${INIT:+--init-from "$INIT"})
SHAPE=(--preset small --set n_layers=${LAYERS:-6} --set n_heads=${HEADS:-6} --set d_model=${DMODEL:-384}
       --set d_ff=${DFF:-1536} --set max_seq_len=$SEQ --attention local --set window=512
       --set max_relative_distance=512 --set dropout=${DROPOUT:-0.0})
TRAIN=(--seq-len "$SEQ" --batch-size "$BATCH" --lr ${LR:-1e-3} --infill-rate ${INFILL_RATE:-0.3}
       --infill-prefix-drop ${PREFIX_DROP:-0} ${INFILL_MEMORY:+--infill-memory} --eval-windows 64
       --sample-tokens 0 --device "$DEVICE" --quiet)

# 1. Probe: the measured tokens/s of this machine at this shape (first logged window skipped).
$PY -m musegen train --data "$DATA" --out "$RUN-probe" --overwrite "${SHAPE[@]}" "${TRAIN[@]}" "${INIT[@]}" \
  --max-steps "$PROBE_STEPS" --set warmup_steps=5 --eval-every 100000 --save-every 100000 \
  --log-every 5
STEPS=$($PY - "$RUN-probe/metrics.jsonl" "$MINUTES" "$((BATCH * SEQ))" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["tokens_per_s"] for r in rows if r.get("kind") == "train"][1:]
if not rates:
    sys.exit("probe: too few steps to measure; raise PROBE_STEPS")
rate = statistics.median(rates)
# 90 % of the budget in training steps; evaluation and saving take the rest.
steps = max(20, int(float(sys.argv[2]) * 60 * 0.9 * rate / int(sys.argv[3])))
print(steps)
print(f"probe: {rate:,.0f} tokens/s -> {steps} steps", file=sys.stderr)
EOF
)
EVERY=$(( STEPS / 6 > 10 ? STEPS / 6 : 10 ))

# 2. The run: warm-up over the first 5 % of its steps, cosine decay to the end.
$PY -m musegen train --data "$DATA" --out "$RUN" --overwrite "${SHAPE[@]}" "${TRAIN[@]}" "${INIT[@]}" \
  --max-steps "$STEPS" --set warmup_steps=$(( STEPS / ${WARMUP_DIV:-20} + 10 )) --eval-every "$EVERY" \
  --save-every "$EVERY" --max-minutes "$($PY -c "print($MINUTES * 1.3)")" --log-every 10

# 3. Ship the lowest-validation-loss weights as float16 with the data's licences.
$PY scripts/ship_checkpoint.py "$RUN/best" "$DATA" "$OUT/musegen-mix"
cp "$RUN/loss.png" "$RUN/metrics.jsonl" "$OUT/musegen-mix/"
