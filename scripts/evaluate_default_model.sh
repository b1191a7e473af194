#!/usr/bin/env bash
# Measure the default checkpoint (checkpoints/musegen-mix) against the old one
# (checkpoints/musegen-music21). Every step is an ordinary musegen command.
#
#   bash scripts/evaluate_default_model.sh                       # CPU, the CLI's defaults
#   PIECES=12 LONG=4 DEVICE=cuda bash scripts/evaluate_default_model.sh
#
# The model card's tables: the previous default from git history beside the shipped one,
#   git worktree add /tmp/prev 11dbbc5 && mkdir -p runs && cp -r /tmp/prev/checkpoints/musegen-mix runs/prev
#   OLD=runs/prev PIECES=16 LONG=2 EVAL_BAND=../shared/corpora/eval-only/beatles \
#     bash scripts/evaluate_default_model.sh
#
# 1. `musegen evaluate`: NLL/perplexity on the test split of data/prepared_mix,
#    overall and per group (nll_by_group), plus token errors and musical statistics of 100
#    continuations → checkpoints/musegen-mix/evaluation.json; the old model's NLL on the same
#    windows → evaluation_old.json.
# 2. `musegen evaluate-groups`: held-out continuations of each kind of music, the new model and
#    the old one side by side on the same pieces → $NEW/evaluation_groups.{json,md}.
#
# PIECES: pieces per group (--pieces); LONG: pieces per group for the long-piece test
# (--long-pieces, 0 skips it; slow on a CPU); DEVICE: torch device for both models.
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-checkpoints/musegen-mix}
OLD=${OLD:-checkpoints/musegen-music21}
PIECES=${PIECES:-24}
LONG=${LONG:-0}
DEVICE=${DEVICE:-cpu}
# EVAL_BAND: an optional folder of real band MIDI to measure on only (e.g. the Beatles
# transcriptions of craffel/midi-ground-truth: no licence, never for training).
EVAL_BAND=${EVAL_BAND:-}

for ckpt in "$NEW" "$OLD"; do
  if [ ! -f "$ckpt/config.json" ]; then
    echo "error: no checkpoint at $ckpt (train it first: scripts/train_default_model.sh)" >&2
    exit 2
  fi
done

musegen evaluate --checkpoint "$NEW" --device "$DEVICE" --data data/prepared_mix --split test \
  --num-prompts 100 --max-windows 64 --json "$NEW/evaluation.json"
musegen evaluate --checkpoint "$OLD" --device "$DEVICE" --data data/prepared_mix --split test \
  --num-prompts 0 --max-windows 64 --json "$NEW/evaluation_old.json"   # the same windows' NLL

musegen evaluate-groups --checkpoint "$NEW" --compare "$OLD" --device "$DEVICE" \
  --group classical=data/m21_bach \
  --group classical_piano=data/m21_more \
  --group folk=data/corpora/nottingham \
  --group pop_piano=data/corpora/pop909 \
  --group full_band=data/corpora/fullband \
  --group drums=data/corpora/groove \
  ${EVAL_BAND:+--group beatles="$EVAL_BAND"} \
  --pieces "$PIECES" --long-pieces "$LONG" \
  --json "$NEW/evaluation_groups.json" --markdown "$NEW/evaluation_groups.md"
