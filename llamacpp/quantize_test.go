package llamacpp_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/blocks"
	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/eval"
)

func quantType(t *testing.T, name string) llamacpp.QuantType {
	q, ok := llamacpp.LookupQuantType(name)
	if !ok {
		t.Fatalf("no type %s", name)
	}
	return q
}

func perplexity(t *testing.T, path, text string, nCtx, chunks int) float64 {
	t.Helper()
	m := load(t, path)
	toks, err := m.Tokenize(text, true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := eval.Perplexity(context.Background(), newCtx(t, m, nCtx, false), toks, chunks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.PPL
}

// Quantized outputs load and evaluate; Q8_0 stays within 1% of F16, Q4_K_M
// is smaller than Q8_0.
func TestQuantizeDeepestModel(t *testing.T) {
	src := fixture.Asset(t, "models/story16-f16.gguf")
	evalText := text(t, "text/unseen/gutenberg_tails.txt", 200000)
	dir := t.TempDir()
	sizes := map[string]int64{}
	ppl := map[string]float64{"F16": perplexity(t, src, evalText, 256, 24)}
	for _, typ := range []string{"Q8_0", "Q4_K_M"} {
		out := filepath.Join(dir, typ+".gguf")
		if err := llamacpp.Quantize(src, out, llamacpp.QuantizeParams{Type: quantType(t, typ), Threads: 2}); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(out)
		sizes[typ] = st.Size()
		ppl[typ] = perplexity(t, out, evalText, 256, 24)
	}
	if d := math.Abs(ppl["Q8_0"]/ppl["F16"] - 1); d > 0.01 {
		t.Errorf("Q8_0 perplexity %.4f is %.2f%% from F16 %.4f", ppl["Q8_0"], 100*d, ppl["F16"])
	}
	if sizes["Q4_K_M"] >= sizes["Q8_0"] || math.IsNaN(ppl["Q4_K_M"]) || ppl["Q4_K_M"] > 2*ppl["F16"] {
		t.Errorf("Q4_K_M: %d bytes (Q8_0 %d), perplexity %.4f", sizes["Q4_K_M"], sizes["Q8_0"], ppl["Q4_K_M"])
	}
	t.Logf("perplexity F16 %.4f, Q8_0 %.4f, Q4_K_M %.4f; sizes %v", ppl["F16"], ppl["Q8_0"], ppl["Q4_K_M"], sizes)
}

// Shapes that do not fit: a fallback type, or an error naming the tensor.
func TestQuantizeShapes(t *testing.T) {
	src := fixture.Asset(t, "models/stories260K.gguf")
	dir := t.TempDir()
	err := llamacpp.Quantize(src, filepath.Join(dir, "q4_0.gguf"), llamacpp.QuantizeParams{Type: quantType(t, "Q4_0")})
	if err == nil || !strings.Contains(err.Error(), "blk.0.ffn_down.weight has rows of 172") {
		t.Fatalf("Q4_0 of FFN width 172: %v", err)
	}
	// Q8_0 has no fallback in llama.cpp; ffn_down falls back as in Q6_K (to F16 here).
	q8 := filepath.Join(dir, "q8.gguf")
	if err := llamacpp.Quantize(src, q8, llamacpp.QuantizeParams{Type: quantType(t, "Q8_0")}); err != nil {
		t.Fatal(err)
	}
	m8, _ := gguf.OpenModel(q8)
	defer m8.Close()
	for _, tn := range m8.AllTensors() {
		want := gguf.TypeQ8_0
		switch {
		case len(tn.Dims) == 1:
			want = gguf.TypeF32
		case strings.HasSuffix(tn.Name, "ffn_down.weight"):
			want = gguf.TypeF16
		}
		if tn.Type != want {
			t.Fatalf("Q8_0: %s is %v, want %v", tn.Name, tn.Type, want)
		}
	}
	if v, _ := m8.Get("general.file_type"); v.String() != "7" {
		t.Fatalf("Q8_0 file type %v", v)
	}
	out := filepath.Join(dir, "q4km.gguf")
	if err := llamacpp.Quantize(src, out, llamacpp.QuantizeParams{Type: quantType(t, "Q4_K_M")}); err != nil {
		t.Fatal(err)
	}
	m, _ := gguf.OpenModel(out)
	defer m.Close()
	for _, tn := range m.AllTensors() {
		if strings.HasSuffix(tn.Name, "ffn_down.weight") && tn.Type != gguf.TypeF16 && tn.Type != gguf.TypeIQ4_NL {
			t.Fatalf("%s is %v: not a fallback type", tn.Name, tn.Type)
		}
	}
	perplexity(t, out, text(t, "text/tinystories/tinystories_val_first100.txt", 20000), 64, 4)
	if err := llamacpp.Quantize(src, filepath.Join(dir, "iq2.gguf"), llamacpp.QuantizeParams{Type: quantType(t, "IQ2_XS")}); err == nil || !strings.Contains(err.Error(), "needs an importance matrix") {
		t.Fatalf("IQ2_XS without imatrix: %v", err)
	}
	if names := fixture.DirNames(t, dir); !reflect.DeepEqual(names, []string{"q4km.gguf", "q8.gguf"}) {
		t.Fatalf("left behind: %v", names)
	}
}

// A quantization that fails inside llama.cpp leaves no output and no temporary file.
func TestFailedQuantizeLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.gguf")
	if err := fixture.Write(in, fixture.Spec{Arch: "llama", Blocks: 2}); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	err := llamacpp.Quantize(in, filepath.Join(outDir, "out.gguf"), llamacpp.QuantizeParams{Type: quantType(t, "Q4_K_M")})
	if err == nil || !strings.Contains(err.Error(), "quantizing to Q4_K_M") {
		t.Fatalf("quantizing an incomplete model: %v", err)
	}
	if names := fixture.DirNames(t, outDir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}

// An imatrix collected while scoring is accepted by ggml's GGUF reader and by
// the quantizer, and can be pruned with the model.
func TestImatrixFromScoring(t *testing.T) {
	src := fixture.Asset(t, "models/story16-f16.gguf")
	m := load(t, src)
	toks, err := m.Tokenize(text(t, "text/gutenberg/pg1661.txt", 100000), true)
	if err != nil {
		t.Fatal(err)
	}
	chunks, _ := m.Chunks(toks, 128, 4)
	ctx := newCtx(t, m, 128, true)
	acc := bi.NewAccumulator(m.Info().NLayer)
	imAcc := imatrix.NewAccumulator()
	ctx.CaptureHidden(acc.Observe)
	ctx.CaptureMatmul(imAcc.Observe)
	if err := llamacpp.Scan(context.Background(), ctx, chunks, nil); err != nil {
		t.Fatal(err)
	}
	im := imAcc.Matrix("pg1661", len(chunks), 128)
	if len(im.Entries) != 16*7 {
		t.Fatalf("%d entries", len(im.Entries))
	}
	for _, e := range im.Entries {
		if e.NMat() != 1 || e.Counts[0] != 4*128 {
			t.Fatalf("%s: counts %v", e.Name, e.Counts)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "imatrix.gguf")
	if err := im.Write(path); err != nil {
		t.Fatal(err)
	}
	info, err := llamacpp.ReadGGUF(path)
	if err != nil || info.GeneralType != "imatrix" || info.Tensors != 2*16*7 {
		t.Fatalf("ggml reads %+v, %v", info, err)
	}
	back, err := imatrix.Read(path)
	if err != nil || !reflect.DeepEqual(back.Entries, im.Entries) || back.ChunkCount != 4 || back.ChunkSize != 128 {
		t.Fatalf("read back: %v", err)
	}
	// IQ2_XS needs an imatrix and takes this one.
	out := filepath.Join(dir, "iq2.gguf")
	if err := llamacpp.Quantize(src, out, llamacpp.QuantizeParams{Type: quantType(t, "IQ2_XS"), Imatrix: back}); err != nil {
		t.Fatal(err)
	}
	perplexity(t, out, text(t, "text/unseen/tinystories_last50.txt", 20000), 128, 4)
}

// A pruned imatrix has exactly the kept blocks' entries, renumbered, with
// the same values, in both file formats.
func TestImatrixPrune(t *testing.T) {
	im := &imatrix.Matrix{Datasets: []string{"d"}, ChunkCount: 3, ChunkSize: 64}
	for b := 0; b < 5; b++ {
		for _, w := range []string{"attn_q.weight", "ffn_down.weight"} {
			e := imatrix.Entry{Name: "blk." + string(rune('0'+b)) + "." + w, NIn: 4, Sums: []float32{float32(b), 1, 2, 3}, Counts: []float32{8}}
			im.Entries = append(im.Entries, e)
		}
	}
	im.Entries = append(im.Entries, imatrix.Entry{Name: "output.weight", NIn: 4, Sums: []float32{9, 9, 9, 9}, Counts: []float32{8}})
	dir := t.TempDir()
	for _, name := range []string{"im.gguf", "im.dat"} {
		path := filepath.Join(dir, name)
		if err := im.Write(path); err != nil {
			t.Fatal(err)
		}
		read, err := imatrix.Read(path)
		if err != nil {
			t.Fatal(err)
		}
		bm, err := blocks.NewMap(5, []int{1, 3})
		if err != nil {
			t.Fatal(err)
		}
		pruned, err := read.Prune(bm)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "pruned-"+name)
		if err := pruned.Write(out); err != nil {
			t.Fatal(err)
		}
		got, err := imatrix.Read(out)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range got.Entries {
			names = append(names, e.Name)
		}
		want := []string{"blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "blk.2.attn_q.weight", "blk.2.ffn_down.weight", "output.weight"}
		if !reflect.DeepEqual(names, want) {
			t.Fatalf("%s: entries %v", name, names)
		}
		// Old block 2 is new block 1, old 4 is new 2: same values.
		for i, old := range []int{0, 2, 4} {
			for _, e := range got.Entries[2*i : 2*i+2] {
				src := findEntry(read, strings.Replace(e.Name, "blk."+string(rune('0'+i)), "blk."+string(rune('0'+old)), 1))
				if e.Means()[0] != float32(old)/8 || !reflect.DeepEqual(e.Means(), src.Means()) || !reflect.DeepEqual(e.Sums, src.Sums) {
					t.Fatalf("%s: %s has %v", name, e.Name, e.Sums)
				}
			}
		}
		if got.Legacy != strings.HasSuffix(name, ".dat") {
			t.Fatalf("%s: format changed", name)
		}
	}
}

func findEntry(im *imatrix.Matrix, name string) *imatrix.Entry {
	for i := range im.Entries {
		if im.Entries[i].Name == name {
			return &im.Entries[i]
		}
	}
	return &imatrix.Entry{}
}
