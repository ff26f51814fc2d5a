package llamacpp

import (
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
)

// topK agrees with a full sort, ties broken by the lower token.
func TestTopK(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 200; trial++ {
		logits := make([]float32, 1+rng.IntN(300))
		for i := range logits {
			logits[i] = float32(rng.IntN(20)) // many ties
		}
		k := 1 + rng.IntN(50)
		all := make([]candidate, len(logits))
		for i, l := range logits {
			all[i] = candidate{int32(i), l}
		}
		sort.SliceStable(all, func(i, j int) bool { return all[i].logit > all[j].logit })
		want := all[:min(k, len(all))]
		if got := topK(nil, logits, k); !reflect.DeepEqual(got, want) {
			t.Fatalf("k=%d: %v, want %v", k, got, want)
		}
	}
}
