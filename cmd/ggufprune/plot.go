package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/prune"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotScores draws BI per block as bars, the removed blocks in another
// colour, to an .svg or .png file (callers check the name with ValidPlotName
// before the work that produces the scores), atomically.
func plotScores(path string, rep *prune.ScoreReport, removed []int) error {
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
	wt, err := p.WriterTo(8*vg.Inch, 4.5*vg.Inch, strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), "."))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.Write(path, func(f *os.File) error {
		_, err := wt.WriteTo(f)
		return err
	})
}

// ValidPlotName reports whether a plot file name ends in a format we draw.
func validPlotName(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".svg" || ext == ".png"
}
