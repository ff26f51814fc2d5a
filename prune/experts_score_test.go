package prune_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// The expert scores of one block of moe8 equal an independent float64
// computation from the block's router logits and expert outputs, captured
// by name in the same decode: softmax over the 8 experts, the top 2,
// weights renormalised over them (llama's mixture, norm_w), and the L2
// norm of each chosen expert's output. The argsort of the routing, an I32
// graph tensor, is watched too (handed over as floats): its first two
// entries per token are the experts of the two largest logits.
func TestExpertScoresMatchReference(t *testing.T) {
	const block = 3
	lm, err := llamacpp.LoadModel(fixture.Asset(t, "models/moe8-f16.gguf"), llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: 128, Threads: 2, Capture: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acc := bi.NewExpertAccumulator()
	if err := c.CaptureExperts(acc.Observe); err != nil {
		t.Fatal(err)
	}
	var logits, down, argsort []float32
	var nEmbd int
	logitsName, downName, argsortName := fmt.Sprintf("ffn_moe_logits-%d", block), fmt.Sprintf("ffn_moe_down-%d", block), fmt.Sprintf("ffn_moe_argsort-%d", block)
	err = c.Watch([]string{logitsName, downName, argsortName}, func(name string, x []float32, cols, rows int) {
		switch name {
		case logitsName:
			logits = slices.Clone(x)
		case argsortName: // I32, handed over as floats
			argsort = slices.Clone(x)
		case downName:
			down, nEmbd = slices.Clone(x), cols
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := lm.Tokenize("Once upon a time, a little fox found a red ball in the garden. She rolled it to her friend the owl, who laughed and rolled it back.", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Decode(toks, 0, len(toks)-1); err != nil {
		t.Fatal(err)
	}
	const experts, used = 8, 2
	n := len(toks)
	if len(logits) != experts*n || len(down) != nEmbd*used*n || len(argsort) != experts*n {
		t.Fatalf("captured %d logits, %d argsort entries and %d outputs for %d tokens", len(logits), len(argsort), len(down), n)
	}
	var count [experts]int
	var reap, gate, norm [experts]float64
	for tok := range n {
		l := logits[tok*experts : (tok+1)*experts]
		p := make([]float64, experts)
		mx := float64(slices.Max(l))
		for e, v := range l {
			p[e] = math.Exp(float64(v) - mx)
		}
		order := []int{0, 1, 2, 3, 4, 5, 6, 7}
		sort.SliceStable(order, func(i, j int) bool { return p[order[i]] > p[order[j]] })
		sum := p[order[0]] + p[order[1]]
		if a := argsort[tok*experts : (tok+1)*experts]; a[0] != float32(order[0]) || a[1] != float32(order[1]) {
			t.Fatalf("token %d: the argsort watched starts %v, the logits' order %v", tok, a[:used], order[:used])
		}
		for k := range used {
			e := order[k]
			var ss float64
			for _, v := range down[(tok*used+k)*nEmbd : (tok*used+k+1)*nEmbd] {
				ss += float64(v) * float64(v)
			}
			g := p[e] / sum
			count[e]++
			reap[e] += g * math.Sqrt(ss)
			gate[e] += g
			norm[e] += math.Sqrt(ss)
		}
	}
	var got bi.BlockExperts
	for _, be := range acc.Scores() {
		if be.Block == block {
			got = be
		}
	}
	if got.Tokens != int64(n) || len(got.Experts) != experts {
		t.Fatalf("block %d: %d tokens, %d experts", block, got.Tokens, len(got.Experts))
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-5*math.Max(1, math.Abs(b)) }
	routed := 0
	for e, s := range got.Experts {
		c := float64(count[e])
		want := bi.ExpertScore{Expert: e, Tokens: int64(count[e]), Frequency: c / float64(n), Gate: gate[e] / float64(n)}
		if c > 0 {
			want.REAP, want.Norm = reap[e]/c, norm[e]/c
			routed++
		}
		if s.Tokens != want.Tokens || !close(s.REAP, want.REAP) || !close(s.Frequency, want.Frequency) || !close(s.Gate, want.Gate) || !close(s.Norm, want.Norm) {
			t.Errorf("expert %d: %+v, want %+v", e, s, want)
		}
	}
	if routed < 3 {
		t.Fatalf("only %d experts routed to: the test shows little", routed)
	}
}

// score --experts on moe8: every block has scores for its 8 experts whose
// frequencies sum to the 2 experts each token is routed to; the importance
// matrix collected in the same pass counts, for every expert weight, the
// tokens routed to each expert; the experts selected are the lowest.
func TestScoreExperts(t *testing.T) {
	m, err := prune.Open(fixture.Asset(t, "models/moe8-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cal, err := runner.CalibrationFile(fixture.Asset(t, "text/gutenberg/pg11.txt"))
	if err != nil {
		t.Fatal(err)
	}
	rep, im, err := m.Score(context.Background(), prune.ScoreOptions{Calibration: cal, Run: runner.Options{Ctx: 128, Chunks: 4, Threads: 2}, Experts: true, Imatrix: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Experts) != 8 {
		t.Fatalf("%d blocks of expert scores", len(rep.Experts))
	}
	for _, be := range rep.Experts {
		var f float64
		for _, s := range be.Experts {
			f += s.Frequency
		}
		if be.Tokens != rep.Tokens || math.Abs(f-2) > 1e-9 {
			t.Fatalf("block %d: %d tokens of %d, frequencies sum to %g", be.Block, be.Tokens, rep.Tokens, f)
		}
		for _, w := range []string{"ffn_up_exps", "ffn_down_exps"} {
			name := fmt.Sprintf("blk.%d.%s.weight", be.Block, w)
			i := slices.IndexFunc(im.Entries, func(e imatrix.Entry) bool { return e.Name == name })
			if i < 0 {
				t.Fatalf("no imatrix entry %s", name)
			}
			for _, s := range be.Experts {
				if got := im.Entries[i].Counts[s.Expert]; int64(got) != s.Tokens {
					t.Fatalf("%s: expert %d counted %g rows, routed %d tokens", name, s.Expert, got, s.Tokens)
				}
			}
		}
	}
	gone, err := m.SelectExperts(rep, prune.ExpertSelection{Count: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range rep.Experts {
		want := be.Lowest(bi.ExpertMetrics[0], 2, nil)
		if !slices.Equal(gone[be.Block], want) || len(want) != 2 {
			t.Fatalf("block %d: removes %v, want %v", be.Block, gone[be.Block], want)
		}
		for _, s := range be.Experts {
			if !slices.Contains(want, s.Expert) && s.REAP < be.Experts[want[1]].REAP {
				t.Fatalf("block %d: kept expert %d (REAP %g) below a removed one", be.Block, s.Expert, s.REAP)
			}
		}
	}
}
