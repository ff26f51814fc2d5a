// Command heal measures healing (docs/healing.md): for k = 1 to a quarter
// of the blocks, the k lowest-BI blocks are removed plainly and with
// healing, and both models are compared with the original on text the
// calibration never saw. It prints a Markdown table and writes heal.json
// and a plot (perplexity against blocks removed, plain and healed).
//
//	go run ./scripts/heal [-m MODEL] [-f CALIB] [-e EVAL] [-o bin/heal]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/heal"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Row is one k.
type Row struct {
	Removed     []int   `json:"removed"`
	Base        float64 `json:"ppl_base"`
	Plain       float64 `json:"ppl_plain"`
	Healed      float64 `json:"ppl_healed"`
	PlainKLD    float64 `json:"kld_plain"`
	HealedKLD   float64 `json:"kld_healed"`
	Share       float64 `json:"share_removed"` // of the perplexity increase
	HealSeconds float64 `json:"heal_seconds"`
}

func main() {
	model := flag.String("m", "testdata/models/story16-f16.gguf", "model")
	calib := flag.String("f", "testdata/text/gutenberg/pg1342.txt", "calibration text")
	evalPath := flag.String("e", "testdata/text/unseen/gutenberg_tails.txt", "evaluation text")
	ctxSize := flag.Int("c", 256, "chunk size")
	calChunks := flag.Int("chunks", 64, "calibration chunks")
	evalChunks := flag.Int("eval-chunks", 32, "evaluation chunks")
	out := flag.String("o", "bin/heal", "output folder")
	flag.Parse()
	ctx := context.Background()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	m, err := prune.Open(*model)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	cal, err := runner.CalibrationFile(*calib)
	if err != nil {
		log.Fatal(err)
	}
	text, err := runner.TextFile(*evalPath)
	if err != nil {
		log.Fatal(err)
	}
	o := runner.Options{Ctx: *ctxSize, Chunks: *calChunks}
	kMax := max(1, m.ScoredBlocks()/4)
	rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: o})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, calibration %s (%d chunks of %d), evaluation %s (%d chunks)\n\n", *model, *calib, *calChunks, *ctxSize, *evalPath, *evalChunks)
	fmt.Println("| removed | plain PPL | healed PPL | plain KLD | healed KLD | share of the increase removed | healing |")
	fmt.Println("|---|---|---|---|---|---|---|")
	var rows []Row
	for k := 1; k <= kMax; k++ {
		removed, err := m.Select(rep, prune.Selection{Count: k, Protect: selection.Protect{First: 1, Last: 1}})
		if err != nil {
			log.Fatal(err)
		}
		plainPath, healedPath := filepath.Join(*out, "plain.gguf"), filepath.Join(*out, "healed.gguf")
		plan, err := m.Plan(removed, surgery.Options{})
		if err != nil {
			log.Fatal(err)
		}
		if _, err := m.Write(ctx, plan, prune.WriteOptions{Output: plainPath, Overwrite: true}); err != nil {
			log.Fatal(err)
		}
		h, err := heal.Heal(ctx, m.GGUF, removed, cal, o, heal.Options{})
		if err != nil {
			log.Fatal(err)
		}
		for name, data := range h.Tensors() {
			if err := plan.ReplaceData(name, data); err != nil {
				log.Fatal(err)
			}
		}
		if _, err := m.Write(ctx, plan, prune.WriteOptions{Output: healedPath, Overwrite: true}); err != nil {
			log.Fatal(err)
		}
		rs, err := eval.Compare(ctx, eval.Base{Model: *model}, []string{plainPath, healedPath}, text, runner.Options{Ctx: *ctxSize, Chunks: *evalChunks})
		if err != nil {
			log.Fatal(err)
		}
		r := Row{Removed: removed, Base: rs[0].PPL, Plain: rs[1].PPL, Healed: rs[2].PPL, PlainKLD: rs[1].KLD.KLD, HealedKLD: rs[2].KLD.KLD, HealSeconds: h.Cost.Seconds}
		r.Share = (r.Plain - r.Healed) / (r.Plain - r.Base)
		rows = append(rows, r)
		fmt.Printf("| %v | %.3f | %.3f | %.4f | %.4f | %.0f%% | %.0f s |\n", removed, r.Plain, r.Healed, r.PlainKLD, r.HealedKLD, 100*r.Share, r.HealSeconds)
		os.Remove(plainPath)
		os.Remove(healedPath)
	}
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "heal.json"), b, 0o644); err != nil {
		log.Fatal(err)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s on %s (unpruned: %.3f)", filepath.Base(*model), filepath.Base(*evalPath), rows[0].Base)
	p.X.Label.Text = "blocks removed (lowest BI)"
	p.Y.Label.Text = "perplexity"
	for i, ser := range []struct {
		name string
		get  func(Row) float64
	}{{"plain", func(r Row) float64 { return r.Plain }}, {"healed", func(r Row) float64 { return r.Healed }}} {
		var pts plotter.XYs
		for k, r := range rows {
			pts = append(pts, plotter.XY{X: float64(k + 1), Y: ser.get(r)})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			log.Fatal(err)
		}
		l.Width = vg.Points(1.5)
		l.Color = []color.RGBA{{220, 70, 50, 255}, {70, 110, 180, 255}}[i]
		p.Add(l)
		p.Legend.Add(ser.name, l)
	}
	p.Legend.Top, p.Legend.Left = true, true
	png := filepath.Join(*out, "heal-"+filepath.Base(*model)+".png")
	if err := p.Save(6*vg.Inch, 4*vg.Inch, png); err != nil {
		log.Fatal(err)
	}
}
