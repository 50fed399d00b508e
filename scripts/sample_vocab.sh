#!/usr/bin/env bash
# The embedded sample at another vocabulary size: trains a BPE tokenizer of VOCAB pieces on
# the sample's train chapters only (data/sample/austen.jsonl.xz minus its first 18, the val
# split) and exports the same documents into challenge shards under OUT. The record-shaped
# model (vocab 8192) needs this: data/sample itself is tokenized at 1024.
#   scripts/sample_vocab.sh 8192 data/sample_sp8192   (after make; OUT is git-ignored there)
set -euo pipefail
VOCAB=${1:?usage: scripts/sample_vocab.sh VOCAB OUT}
OUT=${2:?usage: scripts/sample_vocab.sh VOCAB OUT}
SRC=data/sample
N_VAL=$(grep -o '"val_docs": [0-9]*' "$SRC/manifest.json" | grep -o '[0-9]*$')

[ -x build/pgolf ] || { echo "sample_vocab.sh: build/pgolf is missing; run make first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xz -dc "$SRC/austen.jsonl.xz" | tail -n +$((N_VAL + 1)) > "$work/train.jsonl"
mkdir -p "$OUT"
build/pgolf tokenizer train --input "$work/train.jsonl" --vocab "$VOCAB" --out "$work/tokenizer.model"
build/pgolf data export --docs "$SRC/austen.jsonl.xz" --tokenizer "$work/tokenizer.model" --out "$work/shards" \
    --val-docs "$N_VAL" --shard-tokens 500000
mv "$work/tokenizer.model" "$work"/shards/* "$OUT/"
build/pgolf bpb --tokenizer "$OUT/tokenizer.model" --val "$OUT"
