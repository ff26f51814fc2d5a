// Command experts measures expert pruning on a mixture-of-experts model
// (make experts): for each calibration text, the experts are scored once
// (score --experts); then 25 % and 50 % of the experts of every block are
// removed by each expert metric, by a random choice (the floor, mean of
// several seeds), and, for comparison, as many bytes are removed as whole
// blocks (BI, --target-size at the same size). Every file is evaluated
// against the original on text the calibration never saw, in one pass
// per text (perplexity, mean KL divergence, same top token). It writes
// experts.json and prints a Markdown table.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/eval"
	"github.com/ggufprune/ggufprune/prune/runner"
	"github.com/ggufprune/ggufprune/prune/selection"
)

// Row is one way of pruning at one level, evaluated on every text.
type Row struct {
	Calibration string         `json:"calibration"`
	Method      string         `json:"method"`
	Level       string         `json:"level"` // experts removed per block, or the size matched
	Bytes       int64          `json:"bytes"`
	Removed     map[int][]int  `json:"experts_removed,omitempty"`
	Blocks      []int          `json:"blocks_removed,omitempty"`
	Eval        map[string]Fig `json:"eval"` // by text
}

// Fig is a file's figures on one text (a mean over seeds for random).
type Fig struct {
	PPL     float64 `json:"ppl"`
	PPLBase float64 `json:"ppl_base"`
	KLD     float64 `json:"kld"`
	SameTop float64 `json:"same_top"`
}

func main() {
	model := flag.String("m", "testdata/models/moe8-f16.gguf", "mixture-of-experts model")
	out := flag.String("o", "bin/experts", "output folder")
	calibs := flag.String("f", "testdata/text/gutenberg/pg1342.txt,testdata/text/gutenberg/pg2701.txt", "calibration texts, comma-separated")
	texts := flag.String("eval", "testdata/text/unseen/gutenberg_tails.txt,testdata/text/unseen/tinystories_last50.txt", "evaluation texts, comma-separated")
	chunks := flag.Int("chunks", 32, "calibration chunks")
	evalChunks := flag.Int("eval-chunks", 16, "evaluation chunks per text")
	seeds := flag.Int("seeds", 3, "random choices per level")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	m, err := prune.Open(*model)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if m.MoE == nil {
		log.Fatalf("%s has no experts", *model)
	}
	n := m.MoE.Experts
	levels := []int{n / 4, n / 2}
	var rows []Row
	for _, cal := range strings.Split(*calibs, ",") {
		c, err := runner.CalibrationFile(cal)
		if err != nil {
			log.Fatal(err)
		}
		o := runner.Options{Ctx: 256, Chunks: *chunks}
		rep, _, err := m.Score(ctx, prune.ScoreOptions{Calibration: c, Run: o, Experts: true})
		if err != nil {
			log.Fatal(err)
		}
		type file struct {
			row  int
			path string
		}
		var files []file
		// write writes one file; same says it is another seed of the row
		// before (random choices), whose figures are averaged.
		write := func(r Row, gone map[int][]int, blocks []int, same bool) {
			path := filepath.Join(*out, fmt.Sprintf("%s-%s-%s-%d.gguf", strings.TrimSuffix(filepath.Base(cal), ".txt"), r.Method, r.Level, len(files)))
			p, err := m.Plan(blocks, surgery.Options{Experts: gone})
			if err != nil {
				log.Fatal(err)
			}
			os.Remove(path)
			if _, err := p.Write(path, surgery.OneFile); err != nil {
				log.Fatal(err)
			}
			st, _ := os.Stat(path)
			if r.Bytes == 0 {
				r.Bytes = st.Size()
			}
			if !same {
				rows = append(rows, r)
			}
			files = append(files, file{len(rows) - 1, path})
		}
		for _, k := range levels {
			level := fmt.Sprintf("%d of %d (%d%%)", k, n, 100*k/n)
			var size int64
			for _, metric := range bi.ExpertMetrics {
				gone, err := m.SelectExperts(rep, prune.ExpertSelection{Count: k, Metric: metric.Name}, nil)
				if err != nil {
					log.Fatal(err)
				}
				write(Row{Calibration: filepath.Base(cal), Method: metric.Name, Level: level, Removed: gone}, gone, nil, false)
				st, _ := os.Stat(files[len(files)-1].path)
				size = st.Size()
			}
			for seed := range *seeds {
				rng := rand.New(rand.NewPCG(uint64(seed), uint64(k)))
				gone := map[int][]int{}
				for _, b := range m.MoE.MoEBlocks {
					perm := rng.Perm(n)[:k]
					slices.Sort(perm)
					gone[b] = perm
				}
				write(Row{Calibration: filepath.Base(cal), Method: "random", Level: level}, gone, nil, seed > 0)
			}
			blocks, err := m.Select(rep, prune.Selection{TargetSize: size, Protect: selection.Protect{First: 1, Last: 1}})
			if err != nil {
				log.Printf("blocks at %d bytes: %v", size, err)
				continue
			}
			write(Row{Calibration: filepath.Base(cal), Method: "blocks (bi)", Level: level, Blocks: blocks}, nil, blocks, false)
		}
		var paths []string
		for _, f := range files {
			paths = append(paths, f.path)
		}
		for _, tp := range strings.Split(*texts, ",") {
			text, err := runner.TextFile(tp)
			if err != nil {
				log.Fatal(err)
			}
			rs, err := eval.Compare(ctx, eval.Base{Model: *model}, paths, text, runner.Options{Ctx: 256, Chunks: *evalChunks})
			if err != nil {
				log.Fatal(err)
			}
			sums := map[int]*Fig{}
			count := map[int]int{}
			for i, f := range files {
				r := rs[i+1]
				s := sums[f.row]
				if s == nil {
					s = &Fig{}
					sums[f.row] = s
				}
				s.PPL += r.PPL
				s.PPLBase = rs[0].PPL
				s.KLD += r.KLD.KLD
				s.SameTop += r.KLD.SameTop
				count[f.row]++
			}
			for row, s := range sums {
				c := float64(count[row])
				if rows[row].Eval == nil {
					rows[row].Eval = map[string]Fig{}
				}
				rows[row].Eval[filepath.Base(tp)] = Fig{PPL: s.PPL / c, PPLBase: s.PPLBase, KLD: s.KLD / c, SameTop: s.SameTop / c}
			}
		}
		for _, f := range files {
			os.Remove(f.path)
		}
	}
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "experts.json"), b, 0o644); err != nil {
		log.Fatal(err)
	}
	textNames := []string{}
	for _, tp := range strings.Split(*texts, ",") {
		textNames = append(textNames, filepath.Base(tp))
	}
	fmt.Printf("| calibration | removed | method | size |")
	for _, t := range textNames {
		fmt.Printf(" %s PPL | KLD | same top |", t)
	}
	fmt.Println()
	fmt.Print("|---|---|---|---|")
	for range textNames {
		fmt.Print("---|---|---|")
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s | %.2f MiB |", r.Calibration, r.Level, r.Method, float64(r.Bytes)/(1<<20))
		for _, t := range textNames {
			f := r.Eval[t]
			fmt.Printf(" %.3f (base %.3f) | %.4f | %.1f %% |", f.PPL, f.PPLBase, f.KLD, 100*f.SameTop)
		}
		fmt.Println()
	}
	// Mean KLD of each method over calibrations, levels and texts.
	mean := map[string][]float64{}
	for _, r := range rows {
		for _, f := range r.Eval {
			mean[r.Method] = append(mean[r.Method], math.Log(f.KLD))
		}
	}
	fmt.Println()
	for _, method := range slices.Sorted(func(yield func(string) bool) {
		for k := range mean {
			if !yield(k) {
				return
			}
		}
	}) {
		var s float64
		for _, v := range mean[method] {
			s += v
		}
		fmt.Printf("geometric mean KLD, %s: %.4f\n", method, math.Exp(s/float64(len(mean[method]))))
	}
}
