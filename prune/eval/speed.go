package eval

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// SpeedOptions say how Speed measures. The zero value measures as
// DefaultSpeed says.
type SpeedOptions struct {
	Prompt   int // tokens of the prompt test, decoded in one batch (0: 128); at most the training context
	Generate int // tokens of the generation test, decoded one at a time (0: 32)
	Runs     int // timed runs of each test, after one untimed warm-up (0: 3); the median is reported
}

// DefaultSpeed is what the zero SpeedOptions measure: short tests, so that
// measuring every file of a grid stays cheap beside evaluating it.
var DefaultSpeed = SpeedOptions{Prompt: 128, Generate: 32, Runs: 3}

func (s SpeedOptions) withDefaults() SpeedOptions {
	if s.Prompt <= 0 {
		s.Prompt = DefaultSpeed.Prompt
	}
	if s.Generate <= 0 {
		s.Generate = DefaultSpeed.Generate
	}
	if s.Runs <= 0 {
		s.Runs = DefaultSpeed.Runs
	}
	return s
}

// SpeedResult is how fast a model runs on this machine, in tokens per
// second, as llama-bench's pp and tg tests measure it.
type SpeedResult struct {
	PromptTPS float64 `json:"pp_tps"` // prompt processing: Prompt tokens in one decode
	GenTPS    float64 `json:"tg_tps"` // generation: one token per decode
	Prompt    int     `json:"pp_tokens"`
	Generate  int     `json:"tg_tokens"`
	Runs      int     `json:"runs"`
}

// Speed measures the model in path as llama-bench does (its pp and tg
// tests, random tokens, each run from an empty cache, one warm-up run
// first): prompt processing decodes Prompt tokens in one batch, with logits
// for the last; generation decodes Generate tokens one at a time, each at
// the next position. The result is the median of Runs runs of each, with
// o.Threads threads (a thread count of 0 is all cores). Only o's threads,
// GPU layers and mmap choice are used.
func Speed(ctx context.Context, path string, so SpeedOptions, o runner.Options) (SpeedResult, error) {
	so = so.withDefaults()
	lm, err := runner.Load(path, nil, runner.Options{Threads: o.Threads, GPULayers: o.GPULayers, NoMmap: o.NoMmap, Ctx: 2})
	if err != nil {
		return SpeedResult{}, err
	}
	defer lm.Close()
	info := lm.Info()
	if n := info.NCtxTrain; n > 0 {
		so.Prompt = min(so.Prompt, n)
		so.Generate = min(so.Generate, n)
	}
	lctx, err := lm.NewContext(llamacpp.ContextParams{NCtx: max(so.Prompt, so.Generate), Threads: o.Threads})
	if err != nil {
		return SpeedResult{}, err
	}
	defer lctx.Close()
	// Random tokens, as llama-bench's, from a fixed seed: every model of a
	// comparison decodes the same ones.
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := make([]int32, max(so.Prompt, so.Generate))
	for i := range tokens {
		tokens[i] = int32(rng.IntN(info.NVocab))
	}
	prompt := func() error {
		if err := lctx.ClearMemory(); err != nil {
			return err
		}
		return lctx.Decode(tokens[:so.Prompt], 0, so.Prompt-1)
	}
	generate := func() error {
		if err := lctx.ClearMemory(); err != nil {
			return err
		}
		for i, t := range tokens[:so.Generate] {
			if err := lctx.Decode([]int32{t}, i, 0); err != nil {
				return err
			}
		}
		return nil
	}
	res := SpeedResult{Prompt: so.Prompt, Generate: so.Generate, Runs: so.Runs}
	for _, test := range []struct {
		run    func() error
		tokens int
		tps    *float64
	}{{prompt, so.Prompt, &res.PromptTPS}, {generate, so.Generate, &res.GenTPS}} {
		rates := make([]float64, 0, so.Runs)
		for r := 0; r <= so.Runs; r++ {
			if err := ctx.Err(); err != nil {
				return SpeedResult{}, err
			}
			start := time.Now()
			if err := test.run(); err != nil {
				return SpeedResult{}, fmt.Errorf("%s: measuring speed: %w", path, err)
			}
			if r > 0 { // run 0 warms up: caches, pages of a mapped file
				rates = append(rates, float64(test.tokens)/time.Since(start).Seconds())
			}
		}
		*test.tps = median(rates)
	}
	return res, nil
}

// median is the middle of the values (the mean of the two middle ones for
// an even count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
