package bi

import (
	"math"
	"sort"
)

// LogSoftmax writes the log-probabilities of a vector of logits into dst:
//
//	log p_i = z_i - max_j z_j - log Σ_j exp(z_j - max_j z_j)
//
// with the sum in float64, and returns the index of the largest logit (the
// first one on ties).
func LogSoftmax(dst, logits []float32) (argmax int) {
	if len(dst) != len(logits) {
		panic("bi: LogSoftmax into a slice of another length")
	}
	maxLogit := logits[0]
	for i, z := range logits {
		if z > maxLogit {
			maxLogit, argmax = z, i
		}
	}
	var sum float64
	for _, z := range logits {
		sum += math.Exp(float64(z - maxLogit))
	}
	lse := float64(maxLogit) + math.Log(sum)
	for i, z := range logits {
		dst[i] = float32(float64(z) - lse)
	}
	return argmax
}

// LogProb is log softmax(logits)[tok] (the float64 sum of LogSoftmax)
// without writing the whole distribution.
func LogProb(logits []float32, tok int) float64 {
	m := logits[0]
	for _, z := range logits {
		m = max(m, z)
	}
	var sum float64
	for _, z := range logits {
		sum += math.Exp(float64(z - m))
	}
	return float64(logits[tok]-m) - math.Log(sum)
}

// KLDAccumulator compares a model's next-token distributions with a base
// model's, token by token, as llama.cpp's llama-perplexity
// --kl-divergence does. For each scored token with base log-probabilities
// log p and the model's log q, and the actual next token t:
//
//	KLD      = Σ_i p_i (log p_i - log q_i)        (float64 sum)
//	same top = argmax p == argmax q
//	Δp       = q_t - p_t
//	NLL      = -log q_t,  NLL_base = -log p_t
//
// Sums are float64; the per-token KLD and Δp are kept (4 bytes each) for
// percentiles.
type KLDAccumulator struct {
	sumNLL, sumNLL2, sumNLLBase, sumNLLBase2, sumNLLCross float64
	sumKLD, sumKLD2, sumDp, sumDp2, sumDp4                float64
	sameTop, count                                        int
	klds, dps                                             []float32
	lq                                                    []float32
}

// Observe adds one scored token: the base's log-probabilities (terms whose
// base log-probability is at most baseFloor are left out of the KLD, as
// llama-perplexity leaves out what its 16-bit base file cannot hold; give
// math.Inf(-1) for an exact base), the model's logits, and the token that
// came next.
func (a *KLDAccumulator) Observe(baseLogProbs []float32, baseFloor float32, logits []float32, next int) {
	if len(baseLogProbs) != len(logits) {
		panic("bi: base log-probabilities and logits of different vocabularies")
	}
	if cap(a.lq) < len(logits) {
		a.lq = make([]float32, len(logits))
	}
	lq := a.lq[:len(logits)]
	top := LogSoftmax(lq, logits)
	baseTop := 0
	var kld float64
	for i, lp := range baseLogProbs {
		if lp > baseLogProbs[baseTop] {
			baseTop = i
		}
		if lp > baseFloor {
			kld += math.Exp(float64(lp)) * (float64(lp) - float64(lq[i]))
		}
	}
	nll, nllBase := -float64(lq[next]), -float64(baseLogProbs[next])
	dp := math.Exp(-nll) - math.Exp(-nllBase)
	a.sumNLL += nll
	a.sumNLL2 += nll * nll
	a.sumNLLBase += nllBase
	a.sumNLLBase2 += nllBase * nllBase
	a.sumNLLCross += nll * nllBase
	a.sumKLD += kld
	a.sumKLD2 += kld * kld
	a.sumDp += dp
	a.sumDp2 += dp * dp
	a.sumDp4 += dp * dp * dp * dp
	if top == baseTop {
		a.sameTop++
	}
	a.count++
	a.klds = append(a.klds, float32(kld))
	a.dps = append(a.dps, float32(dp))
}

// Tokens is the number of tokens observed.
func (a *KLDAccumulator) Tokens() int { return a.count }

// KLDStats are llama-perplexity's statistics of a model against a base.
// Each ± is a standard error: for a mean, sqrt(var/(N-1)) with var the
// population variance of the per-token values (0 for N ≤ 10); for PPL,
// ln PPL's error times PPL; for ln(PPL/PPL_base),
// sqrt(σa² + σb² - 2 cov), with cov the covariance of the two per-token
// NLLs over N-1; for RMS Δp, the delta method 0.5/RMS × σ(Δp²); for same
// top, sqrt(f(1-f)/(N-1)).
type KLDStats struct {
	Tokens        int         `json:"tokens"`
	PPL           float64     `json:"ppl"`
	PPLErr        float64     `json:"ppl_err"`
	PPLBase       float64     `json:"ppl_base"`
	PPLBaseErr    float64     `json:"ppl_base_err"`
	LnPPLRatio    float64     `json:"ln_ppl_ratio"`
	LnPPLRatioErr float64     `json:"ln_ppl_ratio_err"`
	CorLnPPL      float64     `json:"cor_ln_ppl"`
	KLD           float64     `json:"kld"`
	KLDErr        float64     `json:"kld_err"`
	KLDPct        Percentiles `json:"kld_percentiles"`
	SameTop       float64     `json:"same_top"` // share of tokens, 0 to 1
	SameTopErr    float64     `json:"same_top_err"`
	Dp            float64     `json:"dp"` // mean Δp, as a probability (0 to 1)
	DpErr         float64     `json:"dp_err"`
	DpRMS         float64     `json:"dp_rms"`
	DpRMSErr      float64     `json:"dp_rms_err"`
	DpPct         Percentiles `json:"dp_percentiles"`
}

// Percentiles of per-token values: linear interpolation at f·(N-1) over the
// sorted values (f = 0.999 for P99_9, …).
type Percentiles struct {
	Max    float64 `json:"max"`
	P99_9  float64 `json:"p99.9"`
	P99    float64 `json:"p99"`
	P95    float64 `json:"p95"`
	P90    float64 `json:"p90"`
	P75    float64 `json:"p75"`
	Median float64 `json:"median"`
	P25    float64 `json:"p25"`
	P10    float64 `json:"p10"`
	P5     float64 `json:"p5"`
	P1     float64 `json:"p1"`
	P0_1   float64 `json:"p0.1"`
	Min    float64 `json:"min"`
}

// Percentile is the linear interpolation at f·(N-1) of sorted values.
func Percentile(sorted []float32, f float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	if f <= 0 {
		return float64(sorted[0])
	}
	if f >= 1 {
		return float64(sorted[len(sorted)-1])
	}
	p := f * float64(len(sorted)-1)
	i := int(p)
	p -= float64(i)
	return (1-p)*float64(sorted[i]) + p*float64(sorted[min(i+1, len(sorted)-1)])
}

func percentiles(v []float32) Percentiles {
	s := append([]float32(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(f float64) float64 { return Percentile(s, f) }
	return Percentiles{Max: q(1), P99_9: q(0.999), P99: q(0.99), P95: q(0.95), P90: q(0.9), P75: q(0.75),
		Median: q(0.5), P25: q(0.25), P10: q(0.1), P5: q(0.05), P1: q(0.01), P0_1: q(0.001), Min: q(0)}
}

// meanErr is llama-perplexity's mean_and_uncertainty.
func meanErr(sum, sum2 float64, n int) (mean, err float64) {
	if n < 1 {
		return 0, 0
	}
	mean = sum / float64(n)
	v := sum2/float64(n) - mean*mean
	if v > 0 && n > 10 {
		err = math.Sqrt(v / float64(n-1))
	}
	return mean, err
}

// Stats computes the statistics of what was observed.
func (a *KLDAccumulator) Stats() KLDStats {
	n := a.count
	s := KLDStats{Tokens: n}
	if n == 0 {
		return s
	}
	la, sa := meanErr(a.sumNLL, a.sumNLL2, n)
	lb, sb := meanErr(a.sumNLLBase, a.sumNLLBase2, n)
	var cov float64
	if n >= 10 {
		cov = (a.sumNLLCross/float64(n) - (a.sumNLL/float64(n))*(a.sumNLLBase/float64(n))) / float64(n-1)
	}
	s.PPL, s.PPLErr = math.Exp(la), math.Exp(la)*sa
	s.PPLBase, s.PPLBaseErr = math.Exp(lb), math.Exp(lb)*sb
	s.LnPPLRatio = la - lb
	s.LnPPLRatioErr = math.Sqrt(max(0, sa*sa+sb*sb-2*cov))
	if sa > 0 && sb > 0 {
		s.CorLnPPL = cov / (sa * sb)
	}
	s.KLD, s.KLDErr = meanErr(a.sumKLD, a.sumKLD2, n)
	s.KLDPct = percentiles(a.klds)
	s.SameTop = float64(a.sameTop) / float64(n)
	if n > 1 {
		s.SameTopErr = math.Sqrt(s.SameTop * (1 - s.SameTop) / float64(n-1))
	}
	s.Dp, s.DpErr = meanErr(a.sumDp, a.sumDp2, n)
	mse, mseErr := meanErr(a.sumDp2, a.sumDp4, n)
	s.DpRMS = math.Sqrt(mse)
	if s.DpRMS > 0 {
		s.DpRMSErr = 0.5 / s.DpRMS * mseErr
	}
	s.DpPct = percentiles(a.dps)
	return s
}
