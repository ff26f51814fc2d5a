package llamacpp

import (
	"context"
	"math"
	"math/rand/v2"
)

// SampleParams control Generate.
type SampleParams struct {
	Seed        uint64  // the same seed gives the same tokens
	Temperature float64 // 0 means 1
	TopK        int     // 0 means 40
}

// Generate samples n tokens of text from the model itself, for calibration
// when no text is at hand. Each sequence starts with BOS and ends at EOS or
// at the context size; a new one then starts. Sampling is top-k with
// temperature from a seeded PCG, so the result is reproducible for a given
// model, seed and thread count. progress, when not nil, is called with the
// number of tokens so far. It stops between sequences when cx is cancelled.
func Generate(cx context.Context, ctx *Context, n int, p SampleParams, progress func(done, total int)) ([]int32, error) {
	if p.Temperature == 0 {
		p.Temperature = 1
	}
	if p.TopK == 0 {
		p.TopK = 40
	}
	rng := rand.New(rand.NewPCG(p.Seed, 0x67677566))
	info := ctx.Model().Info()
	var out []int32
	top := make([]candidate, 0, p.TopK+1)
	weights := make([]float64, 0, p.TopK)
	for len(out) < n {
		if err := cx.Err(); err != nil {
			return nil, err
		}
		if err := ctx.ClearMemory(); err != nil {
			return nil, err
		}
		tok := info.BOS
		for pos := 0; pos < ctx.NCtx() && len(out) < n; pos++ {
			out = append(out, tok)
			if err := ctx.Decode([]int32{tok}, pos, 0); err != nil {
				return nil, err
			}
			logits, err := ctx.logitsView(0)
			if err != nil {
				return nil, err
			}
			top = topK(top[:0], logits, p.TopK)
			weights = weights[:0]
			var sum float64
			for _, c := range top {
				w := math.Exp(float64(c.logit-top[0].logit) / p.Temperature)
				weights = append(weights, w)
				sum += w
			}
			r := rng.Float64() * sum
			tok = top[len(top)-1].tok
			for i, w := range weights {
				if r < w {
					tok = top[i].tok
					break
				}
				r -= w
			}
			if progress != nil && len(out)%64 == 0 {
				progress(len(out), n)
			}
			if tok == info.EOS {
				break
			}
		}
	}
	if progress != nil {
		progress(n, n)
	}
	return out[:n], nil
}

type candidate struct {
	tok   int32
	logit float32
}

// topK keeps the k highest logits in descending order (ties: lower token
// first) in one pass, inserting into a short sorted list.
func topK(top []candidate, logits []float32, k int) []candidate {
	for i, l := range logits {
		if len(top) == k && l <= top[k-1].logit {
			continue
		}
		j := len(top)
		if j < k {
			top = append(top, candidate{})
		} else {
			j = k - 1
		}
		for j > 0 && top[j-1].logit < l {
			top[j] = top[j-1]
			j--
		}
		top[j] = candidate{int32(i), l}
	}
	return top
}
