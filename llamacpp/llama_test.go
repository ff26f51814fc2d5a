package llamacpp_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/eval"
)

func load(t testing.TB, path string) *llamacpp.Model {
	t.Helper()
	m, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newCtx(t testing.TB, m *llamacpp.Model, nCtx int, capture bool) *llamacpp.Context {
	t.Helper()
	c, err := m.NewContext(llamacpp.ContextParams{NCtx: nCtx, Threads: 2, Capture: capture})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func text(t testing.TB, rel string, n int) string {
	t.Helper()
	b, err := os.ReadFile(fixture.Asset(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:min(n, len(b))])
}

// readF32 reads an F32 tensor of a GGUF file.
func readF32(t testing.TB, m *gguf.Model, name string) []float32 {
	t.Helper()
	for _, mt := range m.AllTensors() {
		if mt.Name != name {
			continue
		}
		if mt.Type != gguf.TypeF32 {
			t.Fatalf("%s is %v", name, mt.Type)
		}
		raw := make([]byte, mt.Size)
		if _, err := m.TensorData(mt).ReadAt(raw, 0); err != nil {
			t.Fatal(err)
		}
		out := make([]float32, len(raw)/4)
		for j := range out {
			out[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
		}
		return out
	}
	t.Fatalf("no tensor %s", name)
	return nil
}

// The gguf package's type table matches ggml's own.
func TestTypeTableMatchesGGML(t *testing.T) {
	for _, typ := range gguf.TensorTypes() {
		_, bs, ts, ok := llamacpp.TypeInfo(uint32(typ))
		if !ok || uint64(bs) != typ.BlockSize() || uint64(ts) != typ.BlockBytes() {
			t.Errorf("%v: ggml says block %d, %d bytes; table says %d, %d", typ, bs, ts, typ.BlockSize(), typ.BlockBytes())
		}
	}
	for id := uint32(0); id < 40; id++ {
		if _, _, ts, ok := llamacpp.TypeInfo(id); ok && ts > 0 && !gguf.TensorType(id).Known() {
			t.Errorf("ggml type %d is missing from the table", id)
		}
	}
}

// Capture is right: the block-0 input is the token_embd rows of the tokens,
// and the last block's output put through the final norm and the output
// matrix gives llama.cpp's logits.
func TestCaptureMatchesModel(t *testing.T) {
	path := fixture.Asset(t, "models/stories260K.gguf")
	gm, err := gguf.OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer gm.Close()
	embd := readF32(t, gm, "token_embd.weight")
	norm := readF32(t, gm, "output_norm.weight")
	out := readF32(t, gm, "output.weight")
	epsV, _ := gm.Get("llama.attention.layer_norm_rms_epsilon")
	eps, _ := epsV.Float()

	m := load(t, path)
	info := m.Info()
	const nCtx = 64
	ctx := newCtx(t, m, nCtx, true)
	tokens, err := m.Tokenize(text(t, "text/tinystories/tinystories_val_first100.txt", 2000), true)
	if err != nil {
		t.Fatal(err)
	}
	tokens = tokens[:nCtx]
	var input, last []float32
	seen := 0
	err = ctx.CaptureHidden(func(block int, h []float32, nEmbd, nTokens int) {
		seen++
		if nEmbd != info.NEmbd || nTokens != nCtx {
			t.Errorf("block %d: %d×%d", block, nEmbd, nTokens)
		}
		switch block {
		case -1:
			input = append([]float32(nil), h...)
		case info.NLayer - 1:
			last = append([]float32(nil), h...)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctx.Decode(tokens, 0, 0); err != nil {
		t.Fatal(err)
	}
	if seen != info.NLayer+1 {
		t.Fatalf("saw %d boundaries", seen)
	}
	n := info.NEmbd
	for i, tok := range tokens {
		row := embd[int(tok)*n : (int(tok)+1)*n]
		for j := range row {
			if input[i*n+j] != row[j] {
				t.Fatalf("token %d: embedding input differs from token_embd row %d", i, tok)
			}
		}
	}
	var worst float64
	for i := range tokens {
		h := last[i*n : (i+1)*n]
		var ss float64
		for _, x := range h {
			ss += float64(x) * float64(x)
		}
		scale := 1 / math.Sqrt(ss/float64(n)+eps)
		x := make([]float64, n)
		for j := range x {
			x[j] = float64(h[j]) * scale * float64(norm[j])
		}
		logits, err := ctx.Logits(i)
		if err != nil {
			t.Fatal(err)
		}
		var maxAbs float64
		for _, l := range logits {
			maxAbs = max(maxAbs, math.Abs(float64(l)))
		}
		for v := 0; v < info.NVocab; v++ {
			var dot float64
			for j := range x {
				dot += x[j] * float64(out[v*n+j])
			}
			worst = max(worst, math.Abs(dot-float64(logits[v]))/maxAbs)
		}
	}
	if worst > 1e-4 {
		t.Fatalf("logits from the captured last block differ from llama.cpp's by %g (relative)", worst)
	}
	t.Logf("worst relative logit difference %.2g", worst)
}

// Blocks that are exact identities have BI 0; removing them changes nothing.
func TestIdentityBlocks(t *testing.T) {
	src := fixture.Asset(t, "models/stories260K.gguf")
	dir := t.TempDir()
	planted := filepath.Join(dir, "planted.gguf")
	identity := []int{2, 5}
	if err := fixture.IdentityBlocks(src, planted, identity); err != nil {
		t.Fatal(err)
	}
	m := load(t, planted)
	if m.Info().NLayer != 7 {
		t.Fatalf("%d layers", m.Info().NLayer)
	}
	calib := text(t, "text/gutenberg/pg11.txt", 20000)
	tokens, err := m.Tokenize(calib, true)
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := m.Chunks(tokens, 128, 8)
	if err != nil {
		t.Fatal(err)
	}
	ctx := newCtx(t, m, 128, true)
	acc := bi.NewAccumulator(7)
	ctx.CaptureHidden(acc.Observe)
	if err := llamacpp.Scan(context.Background(), ctx, chunks, nil); err != nil {
		t.Fatal(err)
	}
	if err := acc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, s := range acc.Scores() {
		isID := s.Index == 2 || s.Index == 5
		if isID && (math.Abs(s.BI) > 1e-6 || s.Angular > 1e-3) {
			t.Errorf("identity block %d: BI %g, angular %g", s.Index, s.BI, s.Angular)
		}
		if !isID && s.BI < 1e-4 {
			t.Errorf("real block %d: BI %g", s.Index, s.BI)
		}
	}

	// Remove them and compare perplexity on the same text.
	gm, err := gguf.OpenModel(planted)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := surgery.PlanRemoval(gm, identity, surgery.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pruned := filepath.Join(dir, "pruned.gguf")
	if _, err := plan.Write(pruned, surgery.OneFile); err != nil {
		t.Fatal(err)
	}
	gm.Close()
	evalText := text(t, "text/tinystories/tinystories_val_first100.txt", 40000)
	ppl := func(path string) float64 {
		mm := load(t, path)
		toks, err := mm.Tokenize(evalText, true)
		if err != nil {
			t.Fatal(err)
		}
		r, err := eval.Perplexity(context.Background(), newCtx(t, mm, 128, false), toks, 20, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r.PPL
	}
	before, after, orig := ppl(planted), ppl(pruned), ppl(src)
	if math.Abs(after-before)/before > 1e-5 || math.Abs(orig-after)/orig > 1e-5 {
		t.Fatalf("perplexity planted %.6f, pruned %.6f, original %.6f", before, after, orig)
	}
	t.Logf("perplexity planted %.6f, pruned %.6f", before, after)
}

// Every shared model loads, scores and evaluates.
func TestSharedModels(t *testing.T) {
	calib := text(t, "text/tinystories/tinystories_val_first100.txt", 60000)
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			m := load(t, fixture.Asset(t, "models/"+name))
			info := m.Info()
			nCtx := 64
			var tokens []int32
			var err error
			if name == "TinyStories-656K-Q8_0.gguf" {
				tokens, err = m.Tokenize(strings.NewReplacer("(", "", ")", "").Replace(calib), true)
			} else {
				tokens, err = m.Tokenize(calib, true)
			}
			if err != nil {
				t.Fatal(err)
			}
			chunks, err := m.Chunks(tokens, nCtx, 4)
			if err != nil {
				t.Fatal(err)
			}
			ctx := newCtx(t, m, nCtx, true)
			acc := bi.NewAccumulator(info.NLayer)
			ctx.CaptureHidden(acc.Observe)
			if err := llamacpp.Scan(context.Background(), ctx, chunks, nil); err != nil {
				t.Fatal(err)
			}
			if acc.Tokens() != int64(4*nCtx) {
				t.Fatalf("scored %d tokens", acc.Tokens())
			}
			for _, s := range acc.Scores() {
				if math.IsNaN(s.BI) || s.BI < -1e-9 || s.BI > 2 {
					t.Fatalf("block %d BI %g", s.Index, s.BI)
				}
			}
			ctx.CaptureHidden(nil)
			r, err := eval.Perplexity(context.Background(), ctx, tokens, 4, nil)
			if err != nil {
				t.Fatal(err)
			}
			if math.IsNaN(r.PPL) || r.PPL < 1 || r.Tokens != 4*(nCtx/2-1) {
				t.Fatalf("perplexity %v over %d tokens", r.PPL, r.Tokens)
			}
			t.Logf("%s: %d layers, perplexity %.3f", name, info.NLayer, r.PPL)
		})
	}
}

// llama.cpp's tokenizer throws a C++ exception on text this vocabulary
// cannot represent; it comes back as an error naming the character.
func TestTokenizerExceptionIsAnError(t *testing.T) {
	m := load(t, fixture.Asset(t, "models/TinyStories-656K-Q8_0.gguf"))
	for _, s := range []string{"Once upon a time\r\nthere was", "a cat (black) sat"} {
		_, err := m.Tokenize(s, true)
		if err == nil {
			t.Fatalf("%q tokenized", s)
		}
		bad := strings.IndexAny(s, "\r(")
		want := []string{"cannot represent", "at byte " + strconv.Itoa(bad)}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("error %q does not say %q", err, w)
			}
		}
	}
	// The model still works afterwards.
	if _, err := m.Tokenize("Once upon a time", true); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.gguf")
	os.WriteFile(junk, []byte("GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x0f\x00\x00\x00\x00\x00\x00\x00\x00"), 0o644)
	if _, err := llamacpp.LoadModel(junk, llamacpp.ModelParams{}); err == nil || !strings.Contains(err.Error(), "junk.gguf") || !strings.Contains(err.Error(), "tensor count") {
		t.Fatalf("junk: %v", err)
	}
	// A GGUF that our reader accepts but llama.cpp cannot load: an error, not a crash.
	synth := filepath.Join(dir, "synth.gguf")
	if err := fixture.Write(synth, fixture.Spec{Arch: "llama", Blocks: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := llamacpp.LoadModel(synth, llamacpp.ModelParams{}); err == nil || !strings.Contains(err.Error(), "could not load") {
		t.Fatalf("unloadable model: %v", err)
	}
	if _, err := llamacpp.LoadModel(fixture.Asset(t, "models/stories260K.gguf"), llamacpp.ModelParams{GPULayers: 4}); err == nil || !strings.Contains(err.Error(), "no GPU backend") {
		t.Fatalf("-ngl on a CPU build: %v", err)
	}
	m := load(t, fixture.Asset(t, "models/stories260K.gguf"))
	if _, err := m.NewContext(llamacpp.ContextParams{NCtx: 1 << 20}); err == nil || !strings.Contains(err.Error(), "training context") {
		t.Fatalf("huge context: %v", err)
	}
	toks, _ := m.Tokenize("Once upon a time", true)
	if _, err := m.Chunks(toks, 64, 0); err == nil || !strings.Contains(err.Error(), "fewer than one chunk") {
		t.Fatalf("short text: %v", err)
	}
	ctx := newCtx(t, m, 64, false)
	if _, err := eval.Perplexity(context.Background(), ctx, toks, 0, nil); err == nil || !strings.Contains(err.Error(), "at least 128 tokens") {
		t.Fatalf("short perplexity text: %v", err)
	}
	if err := ctx.CaptureHidden(func(int, []float32, int, int) {}); err == nil {
		t.Fatal("capture on a context made without it")
	}
}

// Loading and closing a model 100 times does not grow memory.
func TestLoadCloseDoesNotLeak(t *testing.T) {
	path := fixture.Asset(t, "models/story16-f16.gguf")
	cycle := func() {
		m, err := llamacpp.LoadModel(path, llamacpp.ModelParams{NoMmap: true})
		if err != nil {
			t.Fatal(err)
		}
		c, err := m.NewContext(llamacpp.ContextParams{NCtx: 64, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		m.Close()
		m.Close()
	}
	for i := 0; i < 10; i++ {
		cycle()
	}
	before := rssKB(t)
	for i := 0; i < 100; i++ {
		cycle()
	}
	after := rssKB(t)
	// Each model is 6 MB read into memory (no mmap): a leak of one per cycle
	// would be 600 MB. llama.cpp itself loses about 5 kB per cycle (valgrind:
	// buffer headers made in weight_buft_supported), and heap arenas of the
	// threads that cgo calls run on hold some slack: tens of MB at most.
	if after-before > 48<<10 {
		t.Fatalf("resident memory grew from %d to %d kB over 100 load/close cycles", before, after)
	}
	t.Logf("RSS %d -> %d kB", before, after)
}

// rssKB is the resident memory after the Go heap has given back what it can.
func rssKB(t *testing.T) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal("no /proc/self/status: this test reads resident memory from Linux's /proc")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb
		}
	}
	return 0
}

// A context keeps its model alive after the model's Close; every method
// called after Close returns an error that unwraps to ErrClosed; Logits are
// Go memory that the next decode does not change.
func TestClosedAndKeptAlive(t *testing.T) {
	m, err := llamacpp.LoadModel(fixture.Asset(t, "models/stories260K.gguf"), llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := m.NewContext(llamacpp.ContextParams{NCtx: 16, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := m.Tokenize("x", true); !errors.Is(err, llamacpp.ErrClosed) {
		t.Fatalf("Tokenize after Close: %v", err)
	}
	if _, err := m.NewContext(llamacpp.ContextParams{NCtx: 16}); !errors.Is(err, llamacpp.ErrClosed) {
		t.Fatalf("NewContext after Close: %v", err)
	}
	bos := m.Info().BOS
	// The context still decodes: the model is freed only with its last context.
	if err := ctx.Decode([]int32{bos, 5, 6}, 0, 0); err != nil {
		t.Fatal(err)
	}
	first, err := ctx.Logits(2)
	if err != nil {
		t.Fatal(err)
	}
	kept := append([]float32(nil), first...)
	if err := ctx.ClearMemory(); err != nil {
		t.Fatal(err)
	}
	if err := ctx.Decode([]int32{bos, 7, 8}, 0, 0); err != nil {
		t.Fatal(err)
	}
	second, _ := ctx.Logits(2)
	if !reflect.DeepEqual(first, kept) || reflect.DeepEqual(first, second) {
		t.Fatal("Logits are not a copy that the next decode leaves alone")
	}
	ctx.Close()
	ctx.Close()
	for name, err := range map[string]error{
		"Decode":        ctx.Decode([]int32{bos}, 0, 0),
		"ClearMemory":   ctx.ClearMemory(),
		"CaptureHidden": ctx.CaptureHidden(nil),
	} {
		var le *llamacpp.Error
		if !errors.Is(err, llamacpp.ErrClosed) || !errors.As(err, &le) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if _, err := ctx.Logits(0); !errors.Is(err, llamacpp.ErrClosed) {
		t.Errorf("Logits after Close: %v", err)
	}
}

// A file whose general.alignment (8) leaves tensor data off ggml's 32-byte
// alignment loads although mapping was asked for (it is read instead), and
// computes what the original computes; a file llama.cpp would abort on is
// refused before llama.cpp opens it.
func TestCheckedBeforeLlama(t *testing.T) {
	src := fixture.Asset(t, "models/stories260K.gguf")
	dir := t.TempDir()
	aligned8 := filepath.Join(dir, "align8.gguf")
	if err := fixture.Rewrite(src, aligned8, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		return fixture.SetKV(append(kvs, gguf.KV{Key: "x.pad", Value: gguf.String("abc")}), "general.alignment", gguf.Uint32(8)), ts
	}); err != nil {
		t.Fatal(err)
	}
	evalText := text(t, "text/unseen/tinystories_last50.txt", 20000)
	if a, b := perplexity(t, src, evalText, 64, 4), perplexity(t, aligned8, evalText, 64, 4); a != b {
		t.Fatalf("perplexity %v of the 8-aligned copy, %v of the original", b, a)
	}
	bad := filepath.Join(dir, "zero-blocks.gguf")
	if err := fixture.Rewrite(src, bad, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		return fixture.SetKV(kvs, "llama.attention.head_count_kv", gguf.Uint32(3)), ts
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := llamacpp.LoadModel(bad, llamacpp.ModelParams{}); !errors.Is(err, arch.ErrRule) || !strings.Contains(err.Error(), "head_count_kv") {
		t.Fatalf("loading a file llama.cpp aborts on: %v", err)
	}
	if err := llamacpp.Quantize(bad, filepath.Join(dir, "q.gguf"), llamacpp.QuantizeParams{Type: quantType(t, "Q8_0")}); !errors.Is(err, arch.ErrRule) {
		t.Fatalf("quantizing a file llama.cpp aborts on: %v", err)
	}
}
