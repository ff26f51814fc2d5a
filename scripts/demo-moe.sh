#!/bin/sh
# Expert pruning on a mixture-of-experts model: score every expert of every
# block on calibration text (REAP), remove a quarter of each block's
# experts, and compare perplexity and KL divergence on text the model never
# saw, against removing as many experts at random. By default it runs on the
# mixture of experts the repository carries (testdata/models/moe8-f16.gguf).
#   make demo-moe [MODEL=m.gguf] [CALIB=calib.txt] [EVAL=eval.txt] [CTX=256]
set -eu
cd "$(dirname "$0")/.."
MODEL=${MODEL:-testdata/models/moe8-f16.gguf}
CALIB=${CALIB:-testdata/text/gutenberg/pg1342.txt}
EVAL=${EVAL:-testdata/text/unseen/gutenberg_tails.txt}
CTX=${CTX:-256}
OUT=${OUT:-bin/demo-moe}
mkdir -p "$OUT"
bin=bin/ggufprune

echo "== 1. inspect $MODEL"
$bin inspect "$MODEL" | sed -n "/^experts/,/^expert weights/p"

echo
echo "== 2. score every expert on $CALIB"
$bin score -m "$MODEL" -f "$CALIB" -c "$CTX" --chunks 32 --experts -o "$OUT/scores.json" --plot "$OUT/experts.svg" --overwrite | sed -n '/^expert scores/,$p'

echo
echo "== 3. remove the 25% of each block's experts with the lowest REAP score"
$bin prune -m "$MODEL" --scores "$OUT/scores.json" --experts 25% -o "$OUT/pruned.gguf" --overwrite | sed -n '/^model  /,$p'

echo
echo "== 4. baseline: as many experts, chosen at random"
list=$(awk 'BEGIN { srand(1); for (b = 0; b < 64; b++) { printf "%s%d:", (b ? ";" : ""), b; n = 0; delete used; while (n < 2) { e = int(rand() * 8); if (!(e in used)) { used[e] = 1; printf "%s%d", (n ? "," : ""), e; n++ } } } }')
blocks=$($bin inspect --json "$MODEL" | sed -n 's/^  "block_count": \([0-9]*\),/\1/p')
list=$(echo "$list" | tr ';' '\n' | head -n "$blocks" | paste -sd';' -)
$bin prune -m "$MODEL" --expert-list "$list" -o "$OUT/random.gguf" --overwrite | sed -n '/^removed experts/p'

echo
echo "== 5. perplexity and KL divergence from the original on $EVAL"
$bin eval --base "$MODEL" -m "$OUT/pruned.gguf" -m "$OUT/random.gguf" -f "$EVAL" -c "$CTX"

echo
echo "outputs: $OUT/scores.json $OUT/experts.svg $OUT/pruned.gguf $OUT/random.gguf"
