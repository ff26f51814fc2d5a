#!/bin/sh
# Plain against healed removal of the lowest-BI blocks, k = 1 to 4 (README,
# "Healing"): calibration 64 chunks of 256 tokens of CALIB, evaluation 32
# chunks of 256 of EVAL, each pruned model compared with the original.
#   sh scripts/heal.sh [MODEL] [CALIB] [EVAL] [SETS]
set -eu
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/models/story16-f32.gguf}
CALIB=${2:-testdata/text/gutenberg/pg1342.txt}
EVAL=${3:-testdata/text/unseen/gutenberg_tails.txt}
SETS=${4:-"2 2,4 2,4,5 2,4,5,6"}
OUT=${OUT:-bin/heal}
mkdir -p "$OUT"
bin=bin/ggufprune
echo "| removed | plain PPL | healed PPL | plain KLD | healed KLD | share of the increase removed | healing time |"
echo "|---|---|---|---|---|---|---|"
for set in $SETS; do
	$bin prune -m "$MODEL" --layers "$set" -o "$OUT/plain.gguf" --overwrite >/dev/null
	t=$($bin prune -m "$MODEL" --layers "$set" --heal -f "$CALIB" -c 256 --chunks 64 -o "$OUT/healed.gguf" --overwrite --json |
		sed -n 's/^ *"seconds": \([0-9.]*\).*/\1/p' | tail -1)
	$bin eval --base "$MODEL" -m "$OUT/plain.gguf" -m "$OUT/healed.gguf" -f "$EVAL" -c 256 --chunks 32 --json |
		awk -v set="$set" -v t="$t" '
			/"ppl":/ { gsub(/[",]/, ""); ppl[n++] = $2 }
			/"kld":/ && !/{/ { gsub(/[",]/, ""); kld[m++] = $2 }
			END { printf "| %s | %.3f | %.3f | %.4f | %.4f | %.0f%% | %.0f s |\n", set, ppl[1], ppl[3], kld[0], kld[1], 100*(ppl[1]-ppl[3])/(ppl[1]-ppl[0]), t }'
done
