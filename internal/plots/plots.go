// Package plots draws ggufprune's results as SVG or PNG files: Block
// Influence per block, expert scores as a heatmap, and the frontier of size
// against KL divergence. Files are written atomically.
package plots

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/frontier"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Scores draws BI per block as bars, the removed blocks in another
// colour, to an .svg or .png file (callers check the name with ValidName
// before the work that produces the scores), atomically.
func Scores(path string, rep *prune.ScoreReport, removed []int) error {
	gone := map[int]bool{}
	for _, b := range removed {
		gone[b] = true
	}
	kept := make(plotter.Values, len(rep.Blocks))
	cut := make(plotter.Values, len(rep.Blocks))
	labels := make([]string, len(rep.Blocks))
	for i, b := range rep.Blocks {
		if gone[b.Index] {
			cut[i] = b.BI
		} else {
			kept[i] = b.BI
		}
		labels[i] = strconv.Itoa(b.Index)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Block Influence of %s\ncalibration: %s (%d tokens, ctx %d)", filepath.Base(rep.Model), filepath.Base(rep.Calibration), rep.Tokens, rep.Ctx)
	p.X.Label.Text = "block"
	p.Y.Label.Text = "BI = 1 - mean cos(h_in, h_out)"
	p.Y.Min = 0
	width := vg.Points(max(4, 300/float64(len(rep.Blocks)+1)))
	series := []struct {
		name   string
		values plotter.Values
		color  color.RGBA
	}{
		{"kept", kept, color.RGBA{R: 70, G: 110, B: 180, A: 255}},
		{"removed", cut, color.RGBA{R: 220, G: 70, B: 50, A: 255}},
	}
	if len(removed) == 0 {
		series = series[:1]
	}
	// Two bar charts at the same positions: each block is drawn in one, as 0 in the other.
	for _, ser := range series {
		bars, err := plotter.NewBarChart(ser.values, width)
		if err != nil {
			return err
		}
		bars.Color = ser.color
		bars.LineStyle.Width = 0
		p.Add(bars)
		p.Legend.Add(ser.name, bars)
	}
	p.Legend.Top = true
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -1, float64(len(labels)) // room for the outer bars
	return save(p, path, 8*vg.Inch, 4.5*vg.Inch)
}

// ValidName reports whether a plot file name ends in a format drawn here.
func ValidName(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".svg" || ext == ".png"
}

// expertGrid is the REAP scores of a report, relative to each block's
// highest, as a grid: x the expert, y the
// block (the row of the report).
type expertGrid struct{ rep *prune.ScoreReport }

func (g expertGrid) Dims() (c, r int) { return len(g.rep.Experts[0].Experts), len(g.rep.Experts) }
func (g expertGrid) Z(c, r int) float64 {
	// Relative to the block's highest: experts compete within a block, and
	// blocks' scales differ by orders of magnitude.
	var top float64
	for _, s := range g.rep.Experts[r].Experts {
		top = max(top, s.REAP)
	}
	if top == 0 {
		return 0
	}
	return g.rep.Experts[r].Experts[c].REAP / top
}
func (g expertGrid) X(c int) float64 { return float64(c) }
func (g expertGrid) Y(r int) float64 { return float64(r) }

// Experts draws the REAP score of every expert of every
// mixture-of-experts block as a heatmap (blocks × experts, darker is lower),
// removed experts (by block) crossed, atomically.
func Experts(path string, rep *prune.ScoreReport, removed map[int][]int) error {
	if len(rep.Experts) == 0 {
		return fmt.Errorf("%s: the scores hold no experts to draw", path)
	}
	pal := moreland.SmoothBlueRed().Palette(64)
	hm := plotter.NewHeatMap(expertGrid{rep}, pal)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("REAP score per expert of %s, relative to its block's highest\ncalibration: %s (%d tokens, ctx %d); blue low, red high", filepath.Base(rep.Model), filepath.Base(rep.Calibration), rep.Tokens, rep.Ctx)
	p.X.Label.Text = "expert"
	p.Y.Label.Text = "block"
	p.Add(hm)
	var xs plotter.XYs
	for r, be := range rep.Experts {
		for _, e := range removed[be.Block] {
			xs = append(xs, plotter.XY{X: float64(e), Y: float64(r)})
		}
	}
	if len(xs) > 0 {
		sc, err := plotter.NewScatter(xs)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Shape = draw.CrossGlyph{}
		sc.GlyphStyle.Radius = vg.Points(5)
		p.Add(sc)
		p.Legend.Add("removed", sc)
		p.Legend.Top = true
	}
	var ticks []plot.Tick
	for r, be := range rep.Experts {
		ticks = append(ticks, plot.Tick{Value: float64(r), Label: strconv.Itoa(be.Block)})
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	var xt []plot.Tick
	for e := range rep.Experts[0].Experts {
		xt = append(xt, plot.Tick{Value: float64(e), Label: strconv.Itoa(e)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(xt)
	return save(p, path, 8*vg.Inch, 6*vg.Inch)
}

// Frontier draws size against mean KL divergence (log scale), one line
// per pruning level, the Pareto front highlighted, atomically.
func Frontier(path string, r *frontier.Result) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: size against KL divergence from the original\nevaluation: %s (%d tokens, ctx %d)", filepath.Base(r.Model), filepath.Base(r.EvalText), r.Tokens, r.Ctx)
	p.X.Label.Text = "file size (MiB)"
	p.Y.Label.Text = "mean KL divergence (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	// A log scale has no 0: a candidate identical to the original is drawn
	// a decade below the smallest divergence measured.
	floor := math.Inf(1)
	for _, c := range r.Candidates {
		if c.KLD > 0 {
			floor = min(floor, c.KLD)
		}
	}
	if math.IsInf(floor, 1) {
		floor = 1e-6
	}
	floor /= 10
	xy := func(c frontier.Candidate) plotter.XY {
		return plotter.XY{X: float64(c.Bytes) / (1 << 20), Y: max(c.KLD, floor)}
	}
	var levels []frontier.Level
	byLevel := map[frontier.Level]plotter.XYs{}
	var front plotter.XYs
	for _, c := range r.Candidates {
		if _, ok := byLevel[c.Level]; !ok {
			levels = append(levels, c.Level)
		}
		byLevel[c.Level] = append(byLevel[c.Level], xy(c))
		if c.Pareto {
			front = append(front, xy(c))
		}
	}
	slices.SortFunc(levels, func(a, b frontier.Level) int {
		if a.Blocks != b.Blocks {
			return a.Blocks - b.Blocks
		}
		if a.Experts != b.Experts {
			return a.Experts - b.Experts
		}
		if a.Healed == b.Healed {
			return 0
		}
		if a.Healed {
			return 1
		}
		return -1
	})
	palette := []color.RGBA{{70, 110, 180, 255}, {90, 160, 90, 255}, {200, 140, 40, 255}, {150, 90, 170, 255}, {60, 160, 170, 255}, {140, 110, 80, 255}, {110, 110, 110, 255}}
	for i, l := range levels {
		pts := byLevel[l]
		slices.SortFunc(pts, func(a, b plotter.XY) int { return int(math.Copysign(1, a.X-b.X)) })
		line, scatter, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		col := palette[i%len(palette)]
		line.Color, scatter.Color = col, col
		switch {
		case l.Healed:
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		case l.Experts > 0:
			line.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		}
		p.Add(line, scatter)
		name := fmt.Sprintf("%d blocks removed", l.Blocks)
		if l.Blocks == 1 {
			name = "1 block removed"
		}
		if l.Healed {
			name += ", healed"
		}
		if l.Experts > 0 {
			name += fmt.Sprintf(", %d experts per block", l.Experts)
		}
		p.Legend.Add(name, line, scatter)
	}
	if len(front) > 0 {
		slices.SortFunc(front, func(a, b plotter.XY) int { return int(math.Copysign(1, a.X-b.X)) })
		line, scatter, err := plotter.NewLinePoints(front)
		if err != nil {
			return err
		}
		red := color.RGBA{R: 220, G: 50, B: 40, A: 255}
		line.Color, line.Width = red, vg.Points(2.5)
		scatter.Color, scatter.Shape, scatter.Radius = red, draw.RingGlyph{}, vg.Points(5)
		p.Add(line, scatter)
		p.Legend.Add("Pareto front", line, scatter)
	}
	p.Legend.Top = true
	return save(p, path, 8*vg.Inch, 5*vg.Inch)
}

// save writes the plot to path in the format its extension names (.svg,
// .png), w × h, atomically.
func save(p *plot.Plot, path string, w, h vg.Length) error {
	wt, err := p.WriterTo(w, h, strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), "."))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.Write(path, func(f *os.File) error {
		_, err := wt.WriteTo(f)
		return err
	})
}
