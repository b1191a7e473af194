#!/usr/bin/env bash
# Build the Groove, POP909, Nottingham and full-band corpora into data/corpora/ (git-ignored),
# one subfolder each, ready for: musegen prepare data/corpora data/prepared
#
# usage: datasets/build_band_corpora.sh [CORPORA_DIR] [OUT_DIR] [extra builder flags, e.g. --overwrite]
# CORPORA_DIR holds groove/, pop909/ and nottingham/ (default: ../shared/corpora); see
# datasets/README.md for where to download each dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-../shared/corpora}"
OUT="${2:-data/corpora}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$OUT"
time musegen corpus groove "$SRC/groove" "$OUT/groove" "$@"
time musegen corpus pop909 "$SRC/pop909" "$OUT/pop909" "$@"
time musegen corpus nottingham "$SRC/nottingham" "$OUT/nottingham" "$@"
time musegen corpus fullband "$SRC/pop909" "$SRC/groove" "$OUT/fullband" "$@"
du -sh "$OUT"/*
