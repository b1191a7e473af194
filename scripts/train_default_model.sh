#!/usr/bin/env bash
# The default model's data and a CPU training recipe, from nothing, offline:
# corpora → mix → prepare → train (continuation + infilling) → ship (fp16) → evaluate.
# Every step is an ordinary musegen command.
#
#   bash scripts/train_default_model.sh                     # CPU: two sessions' budget
#   MINUTES=600 STEPS=12000 STAGE2_STEPS=0 bash scripts/train_default_model.sh   # one longer run
#   SKIP_TRAIN=1 bash scripts/train_default_model.sh        # data only, for the GPU recipe
#
# The shipped checkpoint (13.2 M parameters) was trained on a GPU from these data with
# scripts/train_default_model_gpu.sh. This CPU recipe trained the previous default (3.8 M
# parameters, 4 layers, d_model 256) in two stages on the 2-core CPU (two sessions): stage 1
# from scratch, shipped as float16; stage 2 starts from those weights (a fresh optimiser and a
# shorter warm-up, lower peak rate) with more infilling examples, whose right side is bounded by
# the attention's reach (musegen.data.infill.suffix_budget).
#
# CORPORA points at the folder holding groove/, pop909/ and nottingham/ (see datasets/README.md
# for where to download them). Only licensed data goes in: the music21 collections with
# non-commercial or restrictive terms (Essen, Palestrina, Josquin) are left out on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPORA=${CORPORA:-../shared/corpora}
MINUTES=${MINUTES:-80}
STEPS=${STEPS:-1100}
RUN=${RUN:-runs/mix}
STAGE2_STEPS=${STAGE2_STEPS:-1800}
STAGE2_MINUTES=${STAGE2_MINUTES:-85}
SHAPE=(--preset small --set n_layers=4 --set n_heads=4 --set d_model=256 --set d_ff=1024
       --set max_seq_len=2048 --attention local --set window=512 --set max_relative_distance=512
       --set dropout=0.0)
TRAIN=(--seq-len 2048 --batch-size 4 --lr 1e-3 --set warmup_steps=100 --infill-rate 0.25
       --eval-every 250 --save-every 50 --eval-windows 24 --log-every 10 --sample-tokens 0
       --device cpu --threads 2)

# 1. Corpora, one subfolder each with its corpus.json (licence, attribution, split, group).
if [ "${SKIP_CORPORA:-0}" != 1 ]; then
  datasets/build_band_corpora.sh "$CORPORA" data/corpora --overwrite
  musegen corpus music21 data/m21_bach --collections bach
  musegen corpus music21 data/m21_more --limit 25 --collections \
    beethoven,mozart,haydn,chopin,joplin,handel,corelli,schubert,schumann_clara,schumann_robert,weber,beach,luca,trecento,cpebach,verdi,ciconia
  musegen corpus music21 data/m21_folk --collections miscFolk,airdsAirs,oneills1850 --limit 80
fi

# 2. The mix (hard links, no copies) and its token arrays.
rm -rf data/mix && mkdir -p data/mix
for d in data/corpora/groove data/corpora/pop909 data/corpora/nottingham data/corpora/fullband \
         data/m21_bach data/m21_more data/m21_folk; do
  cp -rl "$d" "data/mix/$(basename "$d")"
done
musegen prepare data/mix data/prepared_mix --overwrite
if [ "${SKIP_TRAIN:-0}" = 1 ]; then exit 0; fi

# 3. Train: local attention (window 512) over 2,048-token windows, a quarter of them rearranged
#    into fill-in-the-middle examples, program augmentation on (the TrainConfig defaults).
musegen train --data data/prepared_mix --out "$RUN" --overwrite "${SHAPE[@]}" "${TRAIN[@]}" \
  --max-steps "$STEPS" --max-minutes "$MINUTES"

# 4. Ship: float16 weights, the data and licences, the notes per instrument it learnt from.
python scripts/ship_checkpoint.py "$RUN/latest" data/prepared_mix checkpoints/musegen-mix
cp "$RUN/loss.png" checkpoints/musegen-mix/loss.png

# 4b. Stage 2: continue from the shipped weights, more infilling, then ship again.
if [ "$STAGE2_STEPS" -gt 0 ]; then
  TRAIN2=("${TRAIN[@]}" --lr 6e-4 --set warmup_steps=50 --infill-rate 0.35 --eval-every 200)
  musegen train --data data/prepared_mix --out "$RUN-2" --overwrite "${SHAPE[@]}" "${TRAIN2[@]}" \
    --init-from checkpoints/musegen-mix --max-steps "$STAGE2_STEPS" --max-minutes "$STAGE2_MINUTES"
  python scripts/ship_checkpoint.py "$RUN-2/latest" data/prepared_mix checkpoints/musegen-mix
  cp "$RUN-2/loss.png" checkpoints/musegen-mix/loss.png
fi

# 5. Evaluate: NLL and token errors on the test split, then the per-group continuation table.
musegen evaluate --checkpoint checkpoints/musegen-mix --data data/prepared_mix --split test \
  --num-prompts 100 --json checkpoints/musegen-mix/evaluation.json
