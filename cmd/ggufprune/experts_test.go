package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// score --experts writes a report with the scores of every expert, a
// heatmap and an importance matrix in one pass; prune --experts reads the
// report back and removes, from every block, the experts the report ranks
// lowest by the method asked for, quantizes with the importance matrix
// sliced like the experts (the pruned imatrix has the kept experts' rows of
// the original, in order), and evaluates; --experts auto reaches a target
// size with the fewest experts.
func TestExpertsCLI(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "moe8-f16.gguf")
	scores, full, heat := filepath.Join(dir, "scores.json"), filepath.Join(dir, "full.imatrix"), filepath.Join(dir, "heat.svg")
	r := runCLI(t, "score", "-m", in, "-f", fixture.Asset(t, "text/gutenberg/pg345.txt"), "-c", "128", "--chunks", "4", "--experts",
		"-o", scores, "--imatrix-out", full, "--plot", heat).ok(t)
	if !strings.Contains(r.stdout, "expert scores: REAP") {
		t.Fatal(r.stdout)
	}
	if b, err := os.ReadFile(heat); err != nil || !strings.Contains(string(b), "<svg") {
		t.Fatalf("heatmap: %v", err)
	}
	var rep struct {
		Experts []struct {
			Block   int
			Tokens  int64
			Experts []struct {
				Expert    int
				REAP      float64
				Frequency float64
			}
		}
	}
	b, err := os.ReadFile(scores)
	if err != nil {
		t.Fatal(err)
	}
	decode(t, string(b), &rep)
	if len(rep.Experts) != 8 || len(rep.Experts[0].Experts) != 8 || rep.Experts[0].Tokens != 4*128 {
		t.Fatalf("report: %d blocks", len(rep.Experts))
	}
	// The two lowest by frequency, ties to the lower index: computed here.
	lowest := func(block int) []int {
		es := slices.Clone(rep.Experts[block].Experts)
		slices.SortStableFunc(es, func(a, b struct {
			Expert    int
			REAP      float64
			Frequency float64
		}) int {
			switch {
			case a.Frequency < b.Frequency:
				return -1
			case a.Frequency > b.Frequency:
				return 1
			}
			return a.Expert - b.Expert
		})
		out := []int{es[0].Expert, es[1].Expert}
		slices.Sort(out)
		return out
	}
	out, pruned := filepath.Join(dir, "out.gguf"), filepath.Join(dir, "pruned.imatrix")
	r = runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "25%", "--expert-method", "frequency", "-o", out,
		"--quantize", "Q4_K_M", "--imatrix", full, "--imatrix-out", pruned, "--eval", fixture.Asset(t, "text/unseen/tinystories_last50.txt"),
		"-c", "128", "--chunks", "2", "--json").ok(t)
	var res struct {
		ExpertsRemoved map[string][]int `json:"experts_removed"`
		ExpertCount    int              `json:"expert_count"`
		ExpertMethod   string           `json:"expert_method"`
		Quantized      string
		Eval           []struct{ PPL float64 }
	}
	decode(t, r.stdout, &res)
	if res.ExpertCount != 6 || res.Quantized != "Q4_K_M" || len(res.Eval) != 2 || !strings.HasPrefix(res.ExpertMethod, "frequency (scores from") {
		t.Fatalf("%s", r.stdout)
	}
	for b := range 8 {
		if got := res.ExpertsRemoved[strconv.Itoa(b)]; !slices.Equal(got, lowest(b)) {
			t.Fatalf("block %d: removed %v, lowest by frequency %v", b, got, lowest(b))
		}
	}
	imFull, err := imatrix.Read(full)
	if err != nil {
		t.Fatal(err)
	}
	imPruned, err := imatrix.Read(pruned)
	if err != nil {
		t.Fatal(err)
	}
	if len(imPruned.Entries) != len(imFull.Entries) {
		t.Fatalf("%d entries pruned, %d full", len(imPruned.Entries), len(imFull.Entries))
	}
	for i, e := range imPruned.Entries {
		f := imFull.Entries[i]
		if f.NMat() == 1 {
			if !slices.Equal(e.Sums, f.Sums) {
				t.Fatalf("%s changed", e.Name)
			}
			continue
		}
		b, _ := strconv.Atoi(strings.Split(e.Name, ".")[1])
		gone := res.ExpertsRemoved[strconv.Itoa(b)]
		k := 0
		for x := range f.NMat() {
			if slices.Contains(gone, x) {
				continue
			}
			if e.Counts[k] != f.Counts[x] || !slices.Equal(e.Sums[k*e.NIn:(k+1)*e.NIn], f.Sums[x*f.NIn:(x+1)*f.NIn]) {
				t.Fatalf("%s: expert %d of the pruned imatrix is not expert %d of the original", e.Name, k, x)
			}
			k++
		}
		if k != e.NMat() {
			t.Fatalf("%s: %d experts, %d kept", e.Name, e.NMat(), k)
		}
	}
	// auto: the fewest experts per block under 80 % of the input.
	r = runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "auto", "--target-size", "80%", "--dry-run", "--json").ok(t)
	var auto struct {
		ExpertCount int   `json:"expert_count"`
		BytesBefore int64 `json:"bytes_before"`
		BytesAfter  int64 `json:"bytes_after"`
	}
	decode(t, r.stdout, &auto)
	if auto.BytesAfter > auto.BytesBefore*8/10 || auto.ExpertCount != 6 {
		t.Fatalf("auto: %s", r.stdout)
	}
	runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "auto", "--dry-run").fails(t, 2, "give --target-size")
	runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "2", "--expert-list", "0-7:1,2", "--dry-run").fails(t, 2, "not both")
	runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "8", "--dry-run").fails(t, 1, "fewer than the 2 each token is routed to")
	runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "x", "--dry-run").fails(t, 2, "--experts")
	runCLI(t, "prune", "-m", in, "--scores", scores, "--experts", "2", "--expert-method", "size", "--dry-run").fails(t, 2, "--expert-method size")
	runCLI(t, "prune", "-m", in, "--scores", scores, "--remove", "1", "--expert-method", "gate", "--dry-run").fails(t, 2, "--expert-method ranks")
	runCLI(t, "prune", "-m", model(t, "story16-f16.gguf"), "--experts", "2", "--dry-run").fails(t, 1, "not a mixture of experts")
	// A block report without expert scores.
	blockScores := filepath.Join(dir, "blocks.json")
	runCLI(t, "score", "-m", in, "-f", fixture.Asset(t, "text/gutenberg/pg345.txt"), "-c", "128", "--chunks", "2", "-o", blockScores).ok(t)
	runCLI(t, "prune", "-m", in, "--scores", blockScores, "--experts", "2", "--dry-run").fails(t, 1, "holds no expert scores")
}
