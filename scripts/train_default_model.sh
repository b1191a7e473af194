#!/usr/bin/env bash
# The recipe of the shipped checkpoint (checkpoints/musegen-music21), from nothing, offline.
# Every step is an ordinary musegen command; on a GPU add `--device cuda --compile` to train.
#
#   bash scripts/train_default_model.sh            # corpus → mix → prepare → train → evaluate
#   MINUTES=120 STEPS=3500 bash scripts/train_default_model.sh   # the two-hour CPU budget
set -euo pipefail
MINUTES=${MINUTES:-46}
STEPS=${STEPS:-1300}
ABLATION_STEPS=${ABLATION_STEPS:-300}
SHAPE=(--preset small --set n_layers=4 --set n_heads=4 --set max_seq_len=512
       --set max_relative_distance=512 --set window=128 --set sparse_stride=64)
COMMON=(--batch-size 16 --seq-len 512 --lr 1e-3 --eval-every 100 --save-every 100
        --eval-windows 48 --log-every 10 --device cpu --threads 2)

# 1. The multi-part mix: all Bach chorales, 250 Palestrina masses + Monteverdi + Josquin,
#    the trecento, Scottish airs and misc folk collections, and every 5th Essen folk song
#    (capped at 1,500 so monophonic tunes do not drown the polyphony).
musegen corpus music21 data/m21_bach --collections bach
musegen corpus music21 data/m21_pal --collections palestrina,monteverdi,josquin --limit 250
musegen corpus music21 data/music21_midi
rm -rf data/mix && mkdir -p data/mix
cp -r data/m21_bach/bach data/m21_pal/palestrina data/m21_pal/monteverdi data/m21_pal/josquin data/mix/
for c in trecento miscFolk airdsAirs beethoven corelli schubert schumann_clara schumann_robert weber beach luca; do
  [ -d "data/music21_midi/$c" ] && cp -r "data/music21_midi/$c" data/mix/
done
find data/music21_midi/essenFolksong -name "*.mid" | sort | awk 'NR%5==0' | head -1500 |
  while read -r f; do rel=${f#data/music21_midi/essenFolksong/}
    mkdir -p "data/mix/essenFolksong/$(dirname "$rel")"; cp "$f" "data/mix/essenFolksong/$rel"; done
musegen prepare data/mix data/prepared --overwrite

# 2. The default model: relative attention (the time cap is what the CPU budget allows).
musegen train --data data/prepared --out runs/default --overwrite "${SHAPE[@]}" --attention relative \
  "${COMMON[@]}" --set warmup_steps=60 --max-steps "$STEPS" --max-minutes "$MINUTES"

# 3. The ablation: the same shape and data, a shorter equal budget for each attention kind.
for a in relative absolute local; do
  musegen train --data data/prepared --out "runs/ablation_$a" --overwrite "${SHAPE[@]}" \
    --attention "$a" "${COMMON[@]}" --set warmup_steps=30 --max-steps "$ABLATION_STEPS" --sample-tokens 0
  musegen evaluate --checkpoint "runs/ablation_$a/best" --data data/prepared --split test \
    --num-prompts 0 --max-windows 0 --json "runs/ablation_$a/eval_test.json"
done

# 4. Ship it: weights in float16 (half the size), evaluated on the held-out test split.
python - <<'PY'
import torch
from musegen.checkpoint import load_pretrained, save_pretrained
ck = load_pretrained("runs/default/best")
save_pretrained(ck.model, ck.tokenizer, "checkpoints/musegen-music21", extra={
    k: v for k, v in ck.meta.items() if k not in ("model", "musegen_version")}, dtype=torch.float16)
PY
cp runs/default/loss.png checkpoints/musegen-music21/loss.png
musegen evaluate --checkpoint checkpoints/musegen-music21 --data data/prepared --split test \
  --num-prompts 100 --json checkpoints/musegen-music21/evaluation.json
