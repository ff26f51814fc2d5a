// Command heal measures healing (docs/healing.md): for k = 1 to a quarter
// of the blocks, the k lowest-BI blocks are removed plainly, with magnitude
// compensation, and with healing (maps of the FFN output, ReplaceMe's, one
// or two per run; the down projection refitted, one to three per run, two
// being prune --heal's default), and the blocks the heal method chooses are
// removed and healed; every
// file is compared with the original on texts the calibration never saw.
// It prints a Markdown table and writes heal.json and a plot (perplexity
// against blocks removed, one line per variant).
//
//	go run ./scripts/heal [-m MODEL] [-f CALIB] [-e EVAL] [-variants 'NAME;…'] [-o bin/heal]
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
	"slices"
	"strings"

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

// Row is one way of removing k blocks, evaluated on every text.
type Row struct {
	Variant     string         `json:"variant"`
	K           int            `json:"k"`
	Removed     []int          `json:"removed"`
	Eval        map[string]Fig `json:"eval"` // by text
	HealSeconds float64        `json:"heal_seconds,omitempty"`
}

// Fig is a file's figures on one text.
type Fig struct {
	Base  float64 `json:"ppl_base"`
	PPL   float64 `json:"ppl"`
	KLD   float64 `json:"kld"`
	Share float64 `json:"share_removed"` // of plain BI's perplexity increase at the same k
}

// variant is a way of choosing and healing.
type variant struct {
	name  string
	heal  bool
	aware bool // blocks chosen by the heal method, else lowest BI
	// compensate: the output projections after each cut scaled by the
	// stream's lost magnitude (heal.Compensate)
	compensate bool
	after      int       // maps in the blocks after each run (heal.Options.After)
	form       heal.Form // what the maps are fitted on
}

var variants = []variant{
	{name: "bi, plain"},
	{name: "bi, compensated", compensate: true},
	{name: "bi, healed, one output map", heal: true, form: heal.Output},
	{name: "bi, healed, two output maps", heal: true, after: 1, form: heal.Output},
	{name: "bi, healed, one projection", heal: true},
	{name: "bi, healed (two projections)", heal: true, after: 1},
	{name: "bi, healed, three projections", heal: true, after: 2},
	{name: "heal, healed (two projections)", heal: true, aware: true, after: 1},
}

func main() {
	model := flag.String("m", "testdata/models/story16-f16.gguf", "model")
	calib := flag.String("f", "testdata/text/mixed/gutenberg_tinystories.txt", "calibration text")
	evalPaths := flag.String("e", "testdata/text/unseen/gutenberg_tails.txt,testdata/text/unseen/tinystories_last50.txt", "evaluation texts, comma-separated")
	ctxSize := flag.Int("c", 256, "chunk size")
	calChunks := flag.Int("chunks", 32, "calibration chunks")
	evalChunks := flag.Int("eval-chunks", 32, "evaluation chunks")
	out := flag.String("o", "bin/heal", "output folder")
	withAware := flag.Bool("heal-method", true, "also remove and heal the blocks the heal method chooses (its search is the slow part)")
	only := flag.String("variants", "", "measure only these variants (names separated by semicolons; plain BI is always measured)")
	flag.Parse()
	variants := variants
	if !*withAware {
		variants = slices.DeleteFunc(slices.Clone(variants), func(v variant) bool { return v.aware })
	}
	if *only != "" {
		names := strings.Split(*only, ";")
		variants = slices.DeleteFunc(slices.Clone(variants), func(v variant) bool {
			return v.name != variants[0].name && !slices.Contains(names, v.name)
		})
	}
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
	o := runner.Options{Ctx: *ctxSize, Chunks: *calChunks}
	kMax := max(1, (m.ScoredBlocks()+2)/4)
	protect := selection.Protect{First: 1, Last: 1}
	rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: cal, Run: o})
	if err != nil {
		log.Fatal(err)
	}
	// The heal method's greedy steps for kMax: its choice for a smaller k
	// is their prefix.
	search := &selection.Search{}
	if *withAware {
		if search, err = m.Choose(ctx, selection.Healed, prune.Selection{Count: kMax, Protect: protect}, cal, o); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("%s, calibration %s (%d chunks of %d; 0: all), evaluation %d chunks of each text; heal method's search: %d passes, %.0f s\n\n",
		*model, *calib, *calChunks, *ctxSize, *evalChunks, search.Cost.Passes, search.Cost.Seconds)
	var rows []Row
	var paths []string
	for k := 1; k <= kMax; k++ {
		bi, err := m.Select(rep, prune.Selection{Count: k, Protect: protect})
		if err != nil {
			log.Fatal(err)
		}
		var aware []int
		for _, st := range search.Steps[:min(k, len(search.Steps))] {
			aware = append(aware, st.Block)
		}
		slices.Sort(aware)
		for _, v := range variants {
			removed := bi
			if v.aware {
				removed = aware
			}
			plan, err := m.Plan(removed, surgery.Options{})
			if err != nil {
				log.Fatal(err)
			}
			r := Row{Variant: v.name, K: k, Removed: removed, Eval: map[string]Fig{}}
			if v.heal {
				h, err := heal.Heal(ctx, m.GGUF, removed, cal, o, heal.Options{After: v.after, Form: v.form})
				if err != nil {
					log.Fatal(err)
				}
				for name, data := range h.Tensors() {
					if err := plan.ReplaceData(name, data); err != nil {
						log.Fatal(err)
					}
				}
				r.HealSeconds = h.Cost.Seconds
			}
			if v.compensate {
				c, err := heal.Compensate(ctx, m.GGUF, removed, cal, o, heal.CompensateOptions{})
				if err != nil {
					log.Fatal(err)
				}
				for name, data := range c.Data() {
					if err := plan.ReplaceData(name, data); err != nil {
						log.Fatal(err)
					}
				}
			}
			path := filepath.Join(*out, fmt.Sprintf("k%d-%d.gguf", k, len(paths)))
			if _, err := m.Write(ctx, plan, prune.WriteOptions{Output: path, Overwrite: true}); err != nil {
				log.Fatal(err)
			}
			rows, paths = append(rows, r), append(paths, path)
		}
	}
	var texts []string
	for _, e := range strings.Split(*evalPaths, ",") {
		text, err := runner.TextFile(e)
		if err != nil {
			log.Fatal(err)
		}
		name := filepath.Base(e)
		texts = append(texts, name)
		rs, err := eval.Compare(ctx, eval.Base{Model: *model}, paths, text, runner.Options{Ctx: *ctxSize, Chunks: *evalChunks})
		if err != nil {
			log.Fatal(err)
		}
		for i := range rows {
			rows[i].Eval[name] = Fig{Base: rs[0].PPL, PPL: rs[i+1].PPL, KLD: rs[i+1].KLD.KLD}
		}
		// The share of plain BI's increase removed, at the same k.
		for i := range rows {
			plain := rows[i-i%len(variants)].Eval[name]
			f := rows[i].Eval[name]
			f.Share = (plain.PPL - f.PPL) / (plain.PPL - f.Base)
			rows[i].Eval[name] = f
		}
	}
	for _, p := range paths {
		os.Remove(p)
	}
	fmt.Print("| k | variant | removed |")
	for _, t := range texts {
		fmt.Printf(" %s (%.3f): PPL | KLD | increase removed |", t, rows[0].Eval[t].Base)
	}
	fmt.Print("\n|---|---|---|")
	for range texts {
		fmt.Print("---|---|---|")
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("| %d | %s | %v |", r.K, r.Variant, r.Removed)
		for _, t := range texts {
			f := r.Eval[t]
			fmt.Printf(" %.3f | %.4f | %.0f%% |", f.PPL, f.KLD, 100*f.Share)
		}
		fmt.Println()
	}
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "heal.json"), b, 0o644); err != nil {
		log.Fatal(err)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s on %s (unpruned: %.3f)", filepath.Base(*model), texts[0], rows[0].Eval[texts[0]].Base)
	p.X.Label.Text = "blocks removed"
	p.Y.Label.Text = "perplexity"
	colors := []color.RGBA{{220, 70, 50, 255}, {150, 80, 170, 255}, {230, 160, 40, 255}, {70, 110, 180, 255}, {40, 160, 80, 255}}
	for vi, v := range variants {
		var pts plotter.XYs
		for _, r := range rows {
			if r.Variant == v.name {
				pts = append(pts, plotter.XY{X: float64(r.K), Y: r.Eval[texts[0]].PPL})
			}
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			log.Fatal(err)
		}
		l.Width = vg.Points(1.5)
		l.Color = colors[vi%len(colors)]
		p.Add(l)
		p.Legend.Add(v.name, l)
	}
	p.Legend.Top, p.Legend.Left = true, true
	png := filepath.Join(*out, "heal-"+filepath.Base(*model)+".png")
	if err := p.Save(6*vg.Inch, 4*vg.Inch, png); err != nil {
		log.Fatal(err)
	}
}
