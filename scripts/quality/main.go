// Command quality measures every selection method of the prune package on
// the shipped models with at least 5 blocks (stories260K, story16 and the
// mixture of experts moe8; make quality): calibrated on a Gutenberg book,
// evaluated on text the calibration never saw, for k = 1 to
// a quarter of the blocks. It writes quality.json, one plot per model and
// text (perplexity against blocks removed, one line per method), and prints
// a Markdown table.
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
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Row is one method's choice at one k, evaluated.
type Row struct {
	Model   string  `json:"model"`
	Method  string  `json:"method"`
	K       int     `json:"k"`
	Removed []int   `json:"removed"`
	Seconds float64 `json:"search_seconds"` // the search for the largest k (its prefixes give the smaller ones), or this k's
	Passes  int     `json:"search_passes"`
	Eval    []Score `json:"eval"`
}

// Score is a pruned model's figures on one text.
type Score struct {
	Text    string  `json:"text"`
	PPL     float64 `json:"ppl"`
	PPLBase float64 `json:"ppl_base"`
	KLD     float64 `json:"kld"`
	SameTop float64 `json:"same_top"`
}

func main() {
	out := flag.String("o", "bin/quality", "output folder")
	calib := flag.String("f", "testdata/text/gutenberg/pg1342.txt", "calibration text")
	chunks := flag.Int("chunks", 32, "calibration chunks")
	evalChunks := flag.Int("eval-chunks", 100, "evaluation chunks per text")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	models := []struct {
		path  string
		texts []string
	}{
		{"testdata/models/stories260K.gguf", []string{"testdata/text/unseen/tinystories_last50.txt", "testdata/text/unseen/gutenberg_tails.txt"}},
		{"testdata/models/story16-f16.gguf", []string{"testdata/text/unseen/gutenberg_tails.txt", "testdata/text/unseen/tinystories_last50.txt"}},
		{"testdata/models/moe8-f16.gguf", []string{"testdata/text/unseen/gutenberg_tails.txt", "testdata/text/unseen/tinystories_last50.txt"}},
	}
	var rows []Row
	for _, mm := range models {
		rows = append(rows, measure(ctx, mm.path, mm.texts, *calib, *chunks, *evalChunks, *out)...)
	}
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "quality.json"), b, 0o644); err != nil {
		log.Fatal(err)
	}
	table(rows)
}

func measure(ctx context.Context, path string, texts []string, calib string, chunks, evalChunks int, out string) []Row {
	m, err := prune.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	kMax := max(1, m.ScoredBlocks()/4)
	cal, err := runner.CalibrationFile(calib)
	if err != nil {
		log.Fatal(err)
	}
	o := runner.Options{Ctx: 256, Chunks: chunks}
	sel := prune.Selection{Count: kMax, Protect: selection.Protect{First: 1, Last: 1}}
	var rows []Row
	for _, method := range selection.Methods() {
		if method == selection.Healed {
			continue // chooses for healed removal: make heal measures it
		}
		if method == selection.Angular {
			for k := 1; k <= kMax; k++ {
				sel.Count = k
				s, err := m.Choose(ctx, method, sel, cal, o)
				if err != nil {
					log.Fatal(err)
				}
				rows = append(rows, Row{Model: path, Method: method.Name, K: k, Removed: s.Removed, Seconds: s.Cost.Seconds, Passes: s.Cost.Passes})
			}
			sel.Count = kMax
			continue
		}
		s, err := m.Choose(ctx, method, sel, cal, o)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("%s %s: %v in %.1f s (%d passes)", filepath.Base(path), method, s.Removed, s.Cost.Seconds, s.Cost.Passes)
		for k := 1; k <= kMax; k++ {
			var removed []int
			for _, st := range s.Steps[:k] {
				removed = append(removed, st.Block)
			}
			slices.Sort(removed)
			rows = append(rows, Row{Model: path, Method: method.Name, K: k, Removed: removed, Seconds: s.Cost.Seconds, Passes: s.Cost.Passes})
		}
	}
	// Write each distinct pruned model once, and evaluate them all against
	// the original in one pass per text.
	dir, err := os.MkdirTemp(out, "pruned-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	files := map[string]string{}
	var paths []string
	for _, r := range rows {
		key := fmt.Sprint(r.Removed)
		if files[key] != "" {
			continue
		}
		plan, err := m.Plan(r.Removed, surgery.Options{})
		if err != nil {
			log.Fatal(err)
		}
		p := filepath.Join(dir, strings.NewReplacer("[", "", "]", "", " ", "-").Replace(key)+".gguf")
		if _, err := m.Write(ctx, plan, prune.WriteOptions{Output: p}); err != nil {
			log.Fatal(err)
		}
		files[key] = p
		paths = append(paths, p)
	}
	for _, text := range texts {
		t, err := runner.TextFile(text)
		if err != nil {
			log.Fatal(err)
		}
		res, err := eval.Compare(ctx, eval.Base{Model: path}, paths, t, runner.Options{Ctx: 256, Chunks: evalChunks})
		if err != nil {
			log.Fatal(err)
		}
		byFile := map[string]eval.Result{}
		for _, r := range res[1:] {
			byFile[r.Model] = r
		}
		for i := range rows {
			if rows[i].Model != path {
				continue
			}
			r := byFile[files[fmt.Sprint(rows[i].Removed)]]
			rows[i].Eval = append(rows[i].Eval, Score{Text: filepath.Base(text), PPL: r.PPL, PPLBase: res[0].PPL, KLD: r.KLD.KLD, SameTop: r.KLD.SameTop})
		}
		plotRows(rows, path, filepath.Base(text), res[0].PPL, filepath.Join(out, strings.TrimSuffix(filepath.Base(path), ".gguf")+"-"+strings.TrimSuffix(filepath.Base(text), ".txt")+".png"))
	}
	return rows
}

// plotRows draws perplexity against blocks removed, one line per method.
func plotRows(rows []Row, model, text string, base float64, path string) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s on %s (unpruned: %.3f)", filepath.Base(model), text, base)
	p.X.Label.Text = "blocks removed"
	p.Y.Label.Text = "perplexity"
	colors := []color.RGBA{{70, 110, 180, 255}, {220, 70, 50, 255}, {60, 160, 80, 255}, {150, 90, 170, 255}, {230, 150, 30, 255}, {40, 170, 170, 255}, {120, 120, 120, 255}}
	for i, method := range selection.Methods() {
		var pts plotter.XYs
		for _, r := range rows {
			if r.Model == model && r.Method == method.Name {
				for _, e := range r.Eval {
					if e.Text == text {
						pts = append(pts, plotter.XY{X: float64(r.K), Y: e.PPL})
					}
				}
			}
		}
		if len(pts) == 0 {
			continue // a method not measured here (heal)
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			log.Fatal(err)
		}
		l.Color = colors[i%len(colors)]
		l.Width = vg.Points(1.5)
		if i%2 == 1 {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		p.Add(l)
		p.Legend.Add(method.Name, l)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		log.Fatal(err)
	}
}

// table prints the rows as Markdown.
func table(rows []Row) {
	fmt.Println("| model | text | k | method | removed | perplexity | KLD | same top | search |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		for _, e := range r.Eval {
			fmt.Printf("| %s | %s | %d | %s | %v | %.4f | %.4f | %.1f %% | %.0f s, %d passes |\n",
				strings.TrimSuffix(filepath.Base(r.Model), ".gguf"), strings.TrimSuffix(e.Text, ".txt"), r.K, r.Method, r.Removed, e.PPL, e.KLD, 100*e.SameTop, r.Seconds, r.Passes)
		}
	}
}
