package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// When llama.cpp refuses a file, the error says why, as llama.cpp logged it,
// without -v: here a tensor the loader requires is missing.
func TestLoadFailureSaysWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.gguf")
	if err := fixture.Rewrite(model(t, "stories260K.gguf"), path, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		var out []gguf.WriterTensor
		for _, w := range ts {
			if w.Info.Name != "blk.1.attn_k.weight" {
				out = append(out, w)
			}
		}
		return kvs, out
	}); err != nil {
		t.Fatal(err)
	}
	text := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	runCLI(t, "eval", "-m", path, "-f", text, "-c", "128", "--chunks", "2").fails(t, 1, "missing tensor 'blk.1.attn_k.weight'")
}

// An importance matrix with a group of zero importances is refused for the
// grid types before llama.cpp's quantizer sees it (it would print "Oops" on
// stdout and abort), naming the imatrix file; other types take it.
func TestGridTypesRefuseZeroImportance(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "stories260K.gguf")
	calib := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	collected := filepath.Join(dir, "im.gguf")
	runCLI(t, "score", "-m", in, "-f", calib, "-c", "128", "--chunks", "2", "--imatrix-out", collected).ok(t)
	im, err := imatrix.Read(collected)
	if err != nil {
		t.Fatal(err)
	}
	for i := range im.Entries {
		clear(im.Entries[i].Sums)
	}
	zero := filepath.Join(dir, "zero.gguf")
	if err := im.Write(zero); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"quantize", "--imatrix", zero, in, filepath.Join(dir, "q.gguf"), "IQ2_XXS"},
		{"prune", "-m", in, "--layers", "2", "--quantize", "IQ1_S", "--imatrix", zero, "-o", filepath.Join(dir, "p.gguf")},
	} {
		r := runCLI(t, args...)
		r.fails(t, 1, zero+": ")
		if !strings.Contains(r.stderr, "have importance 0") || strings.Contains(r.stdout, "Oops") {
			t.Fatalf("%v: %q %q", args, r.stdout, r.stderr)
		}
	}
	runCLI(t, "quantize", "--imatrix", zero, in, filepath.Join(dir, "q8.gguf"), "Q8_0").ok(t)
}

// A split set whose shards come from two models of other widths (the same
// tensor names and counts) is refused before anything is written: llama.cpp
// would not load the output ("wrong shape").
func TestMixedSplitSetRefused(t *testing.T) {
	dir := t.TempDir()
	shards := func(name string, embd uint64) []string {
		_, path := fixture.Synthetic(t, fixture.Spec{Arch: "llama", Blocks: 4, Embd: embd})
		m, err := gguf.OpenModel(path)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		paths, err := fixture.Split(m, filepath.Join(dir, name), 2)
		if err != nil {
			t.Fatal(err)
		}
		return paths
	}
	a, b := shards("a", 64), shards("b", 32)
	mixed := filepath.Join(dir, "mixed")
	for i, src := range []string{a[0], b[1]} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(gguf.SplitPath(mixed, i, 2), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out.gguf")
	runCLI(t, "prune", "-m", gguf.SplitPath(mixed, 0, 2), "--layers", "1", "-o", out).fails(t, 1, "has shape")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("an output was written")
	}
	runCLI(t, "prune", "-m", a[0], "--layers", "1", "-o", out).ok(t)
}

// prune checks its input as eval does before loading: a per-layer array one
// short is refused, not carried into an output llama.cpp cannot load.
func TestPruneChecksItsInput(t *testing.T) {
	_, path := fixture.Synthetic(t, fixture.Spec{Arch: "lfm2", Blocks: 4, PerLayer: map[string][]int{"attention.head_count_kv": {0, 2, 0}},
		Extra: []gguf.KV{{Key: "lfm2.attention.head_count", Value: gguf.Uint32(4)}}})
	out := filepath.Join(t.TempDir(), "out.gguf")
	runCLI(t, "prune", "-m", path, "--layers", "1", "-o", out).fails(t, 1, "lfm2.attention.head_count_kv has 3 elements for 4 blocks")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("an output was written")
	}
}

// An architecture the linked llama.cpp does not know: inspect says so,
// running it says so before llama.cpp sees it; prune removes blocks of one
// whose layer rules were read from the newer llama.cpp (qwen35) as of a
// known one, and of any other only when forced, with a warning.
func TestUnknownArchitecture(t *testing.T) {
	_, path := fixture.Synthetic(t, fixture.Spec{Arch: "qwen35", Blocks: 8})
	r := runCLI(t, "inspect", "--json", path).ok(t)
	var rep struct {
		Unknown string `json:"unknown_architecture"`
	}
	decode(t, r.stdout, &rep)
	if !strings.Contains(rep.Unknown, "known to newer llama.cpp versions") || !strings.Contains(rep.Unknown, "read from the newer llama.cpp's source and checked") {
		t.Fatalf("inspect: %s", r.stdout)
	}
	text := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	runCLI(t, "score", "-m", path, "-f", text).fails(t, 1, "cannot run it")
	out := filepath.Join(t.TempDir(), "out.gguf")
	runCLI(t, "prune", "-m", path, "--layers", "1", "-o", out).fails(t, 1, "full_attention_interval")
	r = runCLI(t, "prune", "-m", path, "--layers", "0-3", "-o", out, "--json").ok(t)
	var res struct{ Warnings []string }
	decode(t, r.stdout, &res)
	if len(res.Warnings) != 0 {
		t.Fatalf("warnings: %s", r.stdout)
	}

	_, newer := fixture.Synthetic(t, fixture.Spec{Arch: "hy_v3", Blocks: 4})
	out = filepath.Join(t.TempDir(), "newer.gguf")
	runCLI(t, "prune", "-m", newer, "--layers", "1", "-o", out).fails(t, 1, "--force removes them anyway")
	r = runCLI(t, "prune", "-m", newer, "--layers", "1", "-o", out, "--force", "--json").ok(t)
	res.Warnings = nil
	decode(t, r.stdout, &res)
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "hy_v3") || !strings.Contains(res.Warnings[0], "not checked") {
		t.Fatalf("forced: %s", r.stdout)
	}
	_, other := fixture.Synthetic(t, fixture.Spec{Arch: "nosucharch", Blocks: 4})
	r = runCLI(t, "inspect", other).ok(t)
	if !strings.Contains(r.stdout, "nor to the newer ones") {
		t.Fatal(r.stdout)
	}
}

// inspect shows a mixture of experts: experts, used, MoE blocks and the
// bytes of expert weights, computed here from moe8's shapes (8 blocks of
// three stacked F16 tensors of 128 × 128 × 8).
func TestInspectMoE(t *testing.T) {
	r := runCLI(t, "inspect", "--json", model(t, "moe8-f16.gguf")).ok(t)
	var rep struct {
		MoE *struct {
			Experts, Used  int
			MoEBlocks      []int `json:"moe_blocks"`
			DenseBlocks    []int `json:"dense_blocks"`
			ExpertBytes    int64 `json:"expert_bytes"`
			BytesPerExpert int64 `json:"bytes_per_expert"`
		}
	}
	decode(t, r.stdout, &rep)
	const perTensor = 128 * 128 * 8 * 2
	if e := rep.MoE; e == nil || e.Experts != 8 || e.Used != 2 || len(e.MoEBlocks) != 8 || len(e.DenseBlocks) != 0 ||
		e.ExpertBytes != 8*3*perTensor || e.BytesPerExpert != 8*3*perTensor/8 {
		t.Fatalf("%s", r.stdout)
	}
	r = runCLI(t, "inspect", model(t, "moe8-f16.gguf")).ok(t)
	if !strings.Contains(r.stdout, "8, 2 used per token") || !strings.Contains(r.stdout, "expert weights") {
		t.Fatal(r.stdout)
	}
	r = runCLI(t, "inspect", "--json", model(t, "story16-f16.gguf")).ok(t)
	if strings.Contains(r.stdout, `"moe"`) {
		t.Fatal("a dense model with a moe section")
	}
}

// prune --expert-list writes moe8 without the experts (JSON and summary say
// which, and the count left), eval --skip-experts runs it masked, and both
// refuse what llama.cpp could not load.
func TestExpertListCLI(t *testing.T) {
	in := model(t, "moe8-f16.gguf")
	dir := t.TempDir()
	out := filepath.Join(dir, "e.gguf")
	r := runCLI(t, "prune", "-m", in, "--expert-list", "0-7:1,6", "-o", out, "--json").ok(t)
	var res struct {
		Method         string
		ExpertsRemoved map[string][]int `json:"experts_removed"`
		ExpertCount    int              `json:"expert_count"`
		BytesBefore    int64            `json:"bytes_before"`
		BytesAfter     int64            `json:"bytes_after"`
	}
	decode(t, r.stdout, &res)
	const perExpert = 8 * 3 * 128 * 128 * 2 // 8 blocks of three stacked F16 128×128 slices
	if res.Method != "experts" || res.ExpertCount != 6 || len(res.ExpertsRemoved) != 8 || res.BytesBefore-res.BytesAfter < 2*perExpert {
		t.Fatalf("%s", r.stdout)
	}
	r = runCLI(t, "inspect", "--json", out).ok(t)
	if !strings.Contains(r.stdout, `"experts": 6`) {
		t.Fatal(r.stdout)
	}
	text := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	runCLI(t, "eval", "-m", in, "--skip-experts", "0-7:1,6", "-f", text, "-c", "128", "--chunks", "2").ok(t)
	runCLI(t, "eval", "-m", in, "--skip-experts", "0-6:1,6", "-f", text, "-c", "128").fails(t, 1, "block 7 is a mixture-of-experts block with no experts to remove")
	runCLI(t, "prune", "-m", in, "--expert-list", "0-7:0-6", "-o", filepath.Join(dir, "x.gguf")).fails(t, 1, "fewer than the 2 each token is routed to")
	runCLI(t, "prune", "-m", in, "--expert-list", "0-7", "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "BLOCKS:EXPERTS")
	runCLI(t, "prune", "-m", model(t, "story16-f16.gguf"), "--expert-list", "0:1", "-o", filepath.Join(dir, "x.gguf")).fails(t, 1, "has no experts")
}

// Masking experts is refused where it would not compute what removing them
// does: sigmoid gating, or a routing bias.
func TestSkipExpertsNeedsSoftmax(t *testing.T) {
	dir := t.TempDir()
	text := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	sigmoid := filepath.Join(dir, "sigmoid.gguf")
	if err := fixture.Rewrite(model(t, "moe8-f16.gguf"), sigmoid, fixture.EditKV("llama.expert_gating_func", gguf.Uint32(2))); err != nil {
		t.Fatal(err)
	}
	runCLI(t, "eval", "-m", sigmoid, "--skip-experts", "0-7:1,6", "-f", text, "-c", "128").fails(t, 1, "not softmax")
}
