package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
)

// frontier --json prints the grid's shape the docs give, recommends a
// candidate that fits with the command that makes it, draws the plot, and
// leaves no temporary file behind.
func TestFrontierJSON(t *testing.T) {
	dir, tmp := t.TempDir(), t.TempDir()
	t.Setenv("TMPDIR", tmp)
	in := model(t, "story16-f16.gguf")
	plotFile := filepath.Join(dir, "frontier.svg")
	r := runCLI(t, "frontier", "-m", in, "-f", fixture.Asset(t, "text/gutenberg/pg1342.txt"), "--eval", fixture.Asset(t, "text/unseen/gutenberg_tails.txt"),
		"-c", "64", "--chunks", "2", "-t", "1", "--types", "COPY,Q8_0", "--remove", "0,1", "--target-size", "70%", "--plot", plotFile, "--json").ok(t)
	var res struct {
		Model string
		Base  struct {
			Bytes int64
			PPL   float64
			PPTPS float64 `json:"pp_tps"`
			TGTPS float64 `json:"tg_tps"`
		}
		Candidates  []map[string]any
		Recommended *struct {
			Type    string
			Bytes   int64
			Command string
		}
	}
	decode(t, r.stdout, &res)
	if res.Model != in || res.Base.Bytes <= 0 || res.Base.PPL <= 0 || res.Base.PPTPS <= 0 || res.Base.TGTPS <= 0 || len(res.Candidates) != 4 {
		t.Fatalf("%s", r.stdout)
	}
	for _, c := range res.Candidates {
		for _, k := range []string{"removed", "experts", "type", "bytes", "ppl", "kld", "same_top", "pp_tps", "tg_tps", "pareto"} {
			if _, ok := c[k]; !ok {
				t.Errorf("candidate %v has no %q", c, k)
			}
		}
		if _, ok := c["file"]; ok {
			t.Errorf("candidate %v names a file without --keep", c)
		}
	}
	// 70% of story16-f16 leaves Q8_0 (about 64%) unpruned as the closest.
	rec := res.Recommended
	if rec == nil || rec.Type != "Q8_0" || float64(rec.Bytes) > 0.7*float64(res.Base.Bytes) ||
		!strings.HasPrefix(rec.Command, "ggufprune score -m "+in) || !strings.Contains(rec.Command, "&& ggufprune quantize --imatrix story16-f16.imatrix "+in+" story16-f16-r0-Q8_0.gguf Q8_0") {
		t.Errorf("recommended %+v", rec)
	}
	if b, err := os.ReadFile(plotFile); err != nil || !strings.Contains(string(b), "<svg") {
		t.Errorf("plot: %v", err)
	}
	if left := fixture.DirNames(t, tmp); len(left) != 0 {
		t.Errorf("left in the temporary folder: %v", left)
	}
}

// Bad flag values are usage errors (exit 2) naming the flag; an unreadable
// file is a failure (exit 1) naming the file.
func TestFrontierBadFlags(t *testing.T) {
	in := model(t, "story16-f16.gguf")
	text := fixture.Asset(t, "text/unseen/gutenberg_tails.txt")
	base := []string{"frontier", "-m", in, "--eval", text, "-c", "64", "--chunks", "2", "-t", "1"}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frontier", "-m", in}, 2, "--eval"},
		{[]string{"--types", "Q4_K_M,Q9"}, 2, "--types"},
		{[]string{"--remove", "1,x"}, 2, "--remove"},
		{[]string{"--remove", "15"}, 2, "--remove 15"},
		{[]string{"--experts", "2"}, 2, "--experts"},
		{[]string{"--target-size", "big"}, 2, "--target-size"},
		{[]string{"--plot", "f.txt"}, 2, "--plot"},
		{[]string{"--imatrix", "x.imatrix", "--no-imatrix"}, 2, "--no-imatrix"},
		{[]string{"--per-pass", "-1"}, 2, "--per-pass"},
		{[]string{"--keep", filepath.Join(t.TempDir(), "missing")}, 1, "missing"},
		{[]string{"--imatrix", filepath.Join(t.TempDir(), "none.imatrix")}, 1, "none.imatrix"},
	} {
		args := tc.args
		if args[0] != "frontier" {
			args = append(append([]string{}, base...), args...)
		}
		runCLI(t, args...).fails(t, tc.code, tc.want)
	}
	runCLI(t, "frontier", "-m", in, "--eval", filepath.Join(t.TempDir(), "gone.txt")).fails(t, 1, "gone.txt")
}
