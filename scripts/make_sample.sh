#!/usr/bin/env bash
# Rebuilds data/sample/ from scratch: Jane Austen's novels from Debian's
# r-cran-janeaustenr package -> austen.jsonl.xz (one document a chapter, fixed shuffle)
# -> tokenizer.model (BPE, vocab 1024, trained on the train documents only) -> the
# challenge shards and manifest.json (val = the first 8% of documents).
# Needs build/pgolf (make), apt-get, dpkg-deb, python3 and xz. Run from the repo root.
set -euo pipefail

NOVELS=("Emma" "Northanger Abbey" "Persuasion" "Pride And Prejudice" "Sense And Sensibility")
VAL_PERCENT=8
VOCAB=1024
SHARD_TOKENS=500000
OUT=data/sample

[ -x build/pgolf ] || { echo "make_sample.sh: build/pgolf is missing; run make first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && apt-get download r-cran-janeaustenr >/dev/null)
dpkg-deb -x "$work"/r-cran-janeaustenr_*.deb "$work/pkg"
rdb="$work/pkg/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
n_val=$(python3 scripts/austen_docs.py "$rdb" "$work/austen.jsonl" "$work/train.jsonl" "$VAL_PERCENT" "${NOVELS[@]}")

mkdir -p "$OUT"
xz -9e -T1 -c "$work/austen.jsonl" > "$work/austen.jsonl.xz"
mv "$work/austen.jsonl.xz" "$OUT/austen.jsonl.xz"
build/pgolf tokenizer train --input "$work/train.jsonl" --vocab "$VOCAB" --out "$OUT/tokenizer.model"
build/pgolf data export --docs "$OUT/austen.jsonl.xz" --tokenizer "$OUT/tokenizer.model" --out "$OUT" \
    --val-docs "$n_val" --shard-tokens "$SHARD_TOKENS"
build/pgolf bpb --tokenizer "$OUT/tokenizer.model" --val "$OUT"
du -cb "$OUT"/* | tail -1
