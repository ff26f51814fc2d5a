package surgery_test

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// Removing experts keeps, in every stacked expert tensor and the router of
// each block, exactly the bytes of the kept experts (sliced here from the
// source along the last dimension), and rewrites expert_count.
func TestRemoveExperts(t *testing.T) {
	src, err := gguf.OpenModel(fixture.Asset(t, "models/moe8-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	gone := map[int][]int{}
	for b := range 8 {
		gone[b] = []int{b % 8, (b + 3) % 8}
	}
	plan, err := surgery.PlanRemoval(src, nil, surgery.Options{Experts: gone})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.gguf")
	if _, err := plan.Write(out, surgery.OneFile); err != nil {
		t.Fatal(err)
	}
	got, err := gguf.OpenModel(out)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if v, _ := got.Get("llama.expert_count"); v.String() != "6" {
		t.Fatalf("expert_count %v", v)
	}
	cut := 0
	for _, st := range src.AllTensors() {
		gt, ok := got.Tensor(st.Name)
		if !ok {
			t.Fatalf("%s missing", st.Name)
		}
		sb, gb := fixture.TensorBytes(t, src, st), fixture.TensorBytes(t, got, gt)
		b, rest, isBlock, _ := blocks.Split(st.Name)
		if !isBlock || !(strings.Contains(rest, "_exps.") || strings.HasPrefix(rest, "ffn_gate_inp.")) {
			if !bytes.Equal(sb, gb) || !slices.Equal(st.Dims, gt.Dims) {
				t.Fatalf("%s changed", st.Name)
			}
			continue
		}
		per := len(sb) / 8
		var want []byte
		for e := range 8 {
			if !slices.Contains(gone[b], e) {
				want = append(want, sb[e*per:(e+1)*per]...)
			}
		}
		last := len(st.Dims) - 1
		if !bytes.Equal(gb, want) || gt.Dims[last] != 6 || !slices.Equal(gt.Dims[:last], st.Dims[:last]) {
			t.Fatalf("%s: %v, %d bytes", st.Name, gt.Dims, len(gb))
		}
		cut++
	}
	if cut != 8*4 {
		t.Fatalf("%d tensors cut, want 32 (3 stacked and the router in 8 blocks)", cut)
	}
	for _, c := range []struct {
		experts map[int][]int
		want    string
	}{
		{map[int][]int{0: {1}}, "block 1 is a mixture-of-experts block with no experts to remove"},
		{map[int][]int{0: {1}, 1: {1}, 2: {1}, 3: {1}, 4: {1}, 5: {1}, 6: {1}, 7: {1, 2}}, "loses 2 experts"},
		{map[int][]int{0: {8}}, "expert 8 is not one of the 8"},
		{map[int][]int{0: {0, 1, 2, 3, 4, 5, 6}, 1: {0, 1, 2, 3, 4, 5, 6}, 2: {0, 1, 2, 3, 4, 5, 6}, 3: {0, 1, 2, 3, 4, 5, 6}, 4: {0, 1, 2, 3, 4, 5, 6}, 5: {0, 1, 2, 3, 4, 5, 6}, 6: {0, 1, 2, 3, 4, 5, 6}, 7: {0, 1, 2, 3, 4, 5, 6}}, "fewer than the 2 each token is routed to"},
	} {
		if _, err := surgery.PlanRemoval(src, nil, surgery.Options{Experts: c.experts}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.experts, err, c.want)
		}
	}
}

// With expert groups, every group must lose as many experts and keep the
// 2 llama.cpp scores a group by, and the groups a token uses must hold the
// experts it is routed to.
func TestRemoveGroupedExperts(t *testing.T) {
	dir := t.TempDir()
	grouped := filepath.Join(dir, "grouped.gguf")
	err := fixture.Rewrite(fixture.Asset(t, "models/moe8-f16.gguf"), grouped, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		kvs = fixture.SetKV(kvs, "llama.expert_group_count", gguf.Uint32(2))
		kvs = fixture.SetKV(kvs, "llama.expert_group_used_count", gguf.Uint32(1))
		kvs = fixture.SetKV(kvs, "llama.expert_used_count", gguf.Uint32(3))
		return kvs, ts
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := gguf.OpenModel(grouped)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	each := func(es ...int) map[int][]int {
		out := map[int][]int{}
		for b := range 8 {
			out[b] = es
		}
		return out
	}
	if _, err := surgery.PlanRemoval(m, nil, surgery.Options{Experts: each(1, 6)}); err != nil {
		t.Fatalf("one expert of each group: %v", err)
	}
	for _, c := range []struct {
		experts map[int][]int
		want    string
	}{
		{each(1, 2), "loses 2 experts of group 0 and 0 of group 1"},
		{each(0, 1, 4, 5), "leaves 2 in each group; the 1 groups a token uses (llama.expert_group_used_count) hold fewer than the 3"},
	} {
		if _, err := surgery.PlanRemoval(m, nil, surgery.Options{Experts: c.experts}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.experts, err, c.want)
		}
	}
}
