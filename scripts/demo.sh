#!/bin/sh
# The whole ShortGPT pipeline on one model: score the blocks on calibration
# text, remove the 25% with the lowest Block Influence, and compare perplexity
# before and after on text the model never saw. By default it runs on the model
# and texts the repository carries (testdata/).
#   make demo [MODEL=m.gguf] [CALIB=calib.txt] [EVAL=eval.txt] [CTX=256]
set -eu
cd "$(dirname "$0")/.."
MODEL=${MODEL:-testdata/models/story16-f16.gguf}
CALIB=${CALIB:-testdata/text/gutenberg/pg1342.txt}
EVAL=${EVAL:-testdata/text/unseen/gutenberg_tails.txt}
CTX=${CTX:-256}
OUT=${OUT:-bin/demo}
mkdir -p "$OUT"
bin=bin/ggufprune

echo "== 1. inspect $MODEL"
$bin inspect "$MODEL" | sed -n '1,7p'

echo
echo "== 2. score every block on $CALIB"
$bin score -m "$MODEL" -f "$CALIB" -c "$CTX" --chunks 32 -o "$OUT/scores.json" --plot "$OUT/scores.svg" --overwrite

echo
echo "== 3. remove the 25% of blocks with the lowest BI"
$bin prune -m "$MODEL" --scores "$OUT/scores.json" --remove 25% -o "$OUT/pruned.gguf" --plot "$OUT/pruned.svg" --overwrite | sed -n '/^model  /,$p'

echo
echo "== 4. baseline: remove as many blocks, but the deepest ones before the last"
n=$($bin inspect --json "$MODEL" | sed -n 's/^  "block_count": \([0-9]*\),/\1/p')
k=$(( (n + 2) / 4 ))
$bin prune -m "$MODEL" --layers "$((n - 1 - k))-$((n - 2))" -o "$OUT/baseline.gguf" --overwrite | sed -n '/^removed/p'

echo
echo "== 5. perplexity before and after on $EVAL"
$bin eval -m "$MODEL" -m "$OUT/pruned.gguf" -m "$OUT/baseline.gguf" -f "$EVAL" -c "$CTX"

echo
echo "outputs: $OUT/scores.json $OUT/scores.svg $OUT/pruned.gguf $OUT/pruned.svg $OUT/baseline.gguf"
