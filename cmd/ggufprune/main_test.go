package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune"
)

// TestMain runs the command itself when the tests re-execute their binary.
func TestMain(m *testing.M) {
	if os.Getenv("GGUFPRUNE_RUN_MAIN") == "1" {
		code := runMain()
		if path := os.Getenv("GGUFPRUNE_TEST_HWM"); path != "" {
			// The command's own peak resident memory (VmHWM starts afresh at
			// exec, unlike rusage's maxrss, which keeps the test process's).
			if st, err := os.ReadFile("/proc/self/status"); err == nil {
				for _, line := range strings.Split(string(st), "\n") {
					if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
						os.WriteFile(path, []byte(strings.TrimSpace(v)), 0o644)
					}
				}
			}
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs ggufprune as a subprocess.
func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	r, _ := runCLIRSS(t, args...)
	return r
}

// runCLIRSS runs ggufprune as a subprocess and also returns its peak
// resident memory in bytes.
func runCLIRSS(t *testing.T, args ...string) (result, int64) {
	t.Helper()
	return runCLIWithin(t, 10*time.Minute, args...)
}

// runCLIWithin is runCLIRSS that kills the command after limit: a command
// that blocks (opening a FIFO waits for a writer) fails the test instead of
// hanging it.
func runCLIWithin(t *testing.T, limit time.Duration, args ...string) (result, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Args[0] = "ggufprune"
	cmd.Env = append(os.Environ(), "GGUFPRUNE_RUN_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s: still running after %v (blocked?); stderr %q", strings.Join(args, " "), limit, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return result{code, out.String(), errb.String()}, ru.Maxrss << 10
}

func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	return r
}

func (r result) fails(t *testing.T, code int, want string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.stderr, want) {
		t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, code, r.stderr, want)
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v in %s", err, s)
	}
}

func model(t *testing.T, name string) string { return fixture.Asset(t, "models/"+name) }

func TestHelp(t *testing.T) {
	r := runCLI(t, "--help").ok(t)
	for _, c := range []string{"inspect", "prune", "score", "eval", "quantize"} {
		if !strings.Contains(r.stdout, c) {
			t.Errorf("--help does not list %s", c)
		}
	}
	r = runCLI(t, "prune", "--help").ok(t)
	for _, f := range []string{"--layers", "3,5-7", "--remove", "--target-size", "--dry-run", "--force", "--keep-split", "--json", "--scores", "--keep-first", "--plot", "--eval", "-ngl"} {
		if !strings.Contains(r.stdout, f) {
			t.Errorf("prune --help does not document %s", f)
		}
	}
	runCLI(t, "nosuch").fails(t, 2, "")
	runCLI(t, "prune", "--bogus").fails(t, 2, "bogus")
}

func TestInspectJSON(t *testing.T) {
	r := runCLI(t, "inspect", "--json", model(t, "story16-f16.gguf")).ok(t)
	var got struct {
		Architecture string `json:"architecture"`
		BlockCount   int    `json:"block_count"`
		TensorCount  int    `json:"tensor_count"`
		FileSize     int64  `json:"file_size"`
		GGUFVersion  int    `json:"gguf_version"`
		Alignment    int    `json:"alignment"`
		Params       int64  `json:"params"`
		Blocks       []struct {
			Index, Tensors int
			Bytes, Params  int64
		} `json:"blocks"`
	}
	decode(t, r.stdout, &got)
	if got.Architecture != "llama" || got.BlockCount != 16 || got.TensorCount != 147 || got.FileSize != 6099392 || got.GGUFVersion != 3 || got.Alignment != 32 || len(got.Blocks) != 16 || got.Blocks[3].Tensors != 9 || got.Blocks[3].Index != 3 {
		t.Fatalf("%+v", got)
	}
	r = runCLI(t, "inspect", model(t, "TinyStories-656K-Q8_0.gguf")).ok(t)
	if !strings.Contains(r.stdout, "Q8_0") || !strings.Contains(r.stdout, "architecture  llama") {
		t.Fatalf("table: %s", r.stdout)
	}
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	os.WriteFile(bad, []byte("not a gguf file at all"), 0o644)
	runCLI(t, "inspect", bad).fails(t, 1, "bad.gguf: gguf: bad magic")
}

func TestPruneLayers(t *testing.T) {
	in := model(t, "story16-f16.gguf")
	dir := t.TempDir()
	out := filepath.Join(dir, "out.gguf")
	r := runCLI(t, "prune", "-m", in, "-o", out, "--layers", "3,5-7", "--json").ok(t)
	var sum struct {
		Removed          []int `json:"removed"`
		BlockCountBefore int   `json:"block_count_before"`
		BlockCountAfter  int   `json:"block_count_after"`
		BytesBefore      int64 `json:"bytes_before"`
		BytesAfter       int64 `json:"bytes_after"`
	}
	decode(t, r.stdout, &sum)
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	stIn, err := os.Stat(in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sum.Removed, []int{3, 5, 6, 7}) || sum.BlockCountBefore != 16 || sum.BlockCountAfter != 12 || sum.BytesBefore != stIn.Size() || sum.BytesAfter != st.Size() {
		t.Fatalf("%+v (file %d bytes)", sum, st.Size())
	}
	// Errors: exit 2 for usage, 1 for what the model refuses; nothing written.
	out2 := filepath.Join(dir, "out2.gguf")
	runCLI(t, "prune", "-m", in, "-o", out2, "--layers", "5-3").fails(t, 2, "ascending range")
	runCLI(t, "prune", "-m", in, "--layers", "3").fails(t, 2, "-o OUT.gguf is required")
	runCLI(t, "prune", "-m", in, "-o", out2, "--layers", "16").fails(t, 1, "block 16 is out of range")
	runCLI(t, "prune", "-m", in, "-o", out2, "--layers", "0-15").fails(t, 1, "removing all 16 blocks")
	runCLI(t, "prune", "-m", in, "-o", out2, "--layers", "1", "--remove", "2").fails(t, 2, "exactly one of")
	runCLI(t, "prune", "-m", out, "-o", out, "--layers", "1").fails(t, 1, "overwrite an input")
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Fatal("a failed prune wrote its output")
	}
	if names := fixture.DirNames(t, dir); !reflect.DeepEqual(names, []string{"out.gguf"}) {
		t.Fatalf("left behind: %v", names)
	}
	// --dry-run writes nothing.
	r = runCLI(t, "prune", "-m", in, "-o", out2, "--layers", "4", "--dry-run").ok(t)
	if !strings.Contains(r.stdout, "nothing written") {
		t.Fatal(r.stdout)
	}
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Fatal("--dry-run wrote the output")
	}
}

func TestScoreAndEvalJSON(t *testing.T) {
	calib := fixture.Asset(t, "text/gutenberg/pg11.txt")
	r := runCLI(t, "score", "-m", model(t, "stories260K.gguf"), "-f", calib, "-c", "128", "--chunks", "4", "--json").ok(t)
	var rep struct {
		Model  string `json:"model"`
		Metric string `json:"metric"`
		Tokens int    `json:"tokens"`
		Ctx    int    `json:"ctx"`
		Blocks []struct {
			Index   int     `json:"index"`
			BI      float64 `json:"bi"`
			Angular float64 `json:"angular"`
		} `json:"blocks"`
	}
	decode(t, r.stdout, &rep)
	if rep.Metric != "bi" || rep.Tokens != 512 || rep.Ctx != 128 || len(rep.Blocks) != 5 || rep.Blocks[4].Index != 4 || rep.Blocks[0].BI <= 0 || rep.Blocks[0].Angular <= 0 {
		t.Fatalf("%+v", rep)
	}
	if strings.Contains(r.stderr, "chunks") {
		t.Fatalf("progress on a non-terminal stderr: %q", r.stderr)
	}
	eval := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	r = runCLI(t, "eval", "-m", model(t, "stories260K.gguf"), "-m", model(t, "story16-f16.gguf"), "-f", eval, "-c", "128", "--chunks", "4", "--json").ok(t)
	var ev []struct {
		Model  string  `json:"model"`
		PPL    float64 `json:"ppl"`
		Tokens int     `json:"tokens"`
	}
	decode(t, r.stdout, &ev)
	if len(ev) != 2 || ev[0].Tokens != 4*63 || ev[0].PPL < 1 || ev[1].PPL < 1 || ev[0].PPL == ev[1].PPL {
		t.Fatalf("%+v", ev)
	}
}

func TestBadText(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, nil, 0o644)
	latin1 := filepath.Join(dir, "latin1.txt")
	os.WriteFile(latin1, []byte("caf\xe9 au lait"), 0o644)
	short := filepath.Join(dir, "short.txt")
	os.WriteFile(short, []byte("Once upon a time."), 0o644)
	paren := filepath.Join(dir, "paren.txt")
	os.WriteFile(paren, []byte(strings.Repeat("Once upon a time there was a cat. ", 40)+"The cat (a black one) sat."), 0o644)
	m := model(t, "stories260K.gguf")
	runCLI(t, "score", "-m", m, "-f", empty).fails(t, 1, "empty.txt: the text file is empty")
	runCLI(t, "score", "-m", m, "-f", latin1).fails(t, 1, "latin1.txt: not UTF-8 text (invalid byte 0xe9 at offset 3)")
	runCLI(t, "score", "-m", m, "-f", short, "-c", "64").fails(t, 1, "fewer than one chunk of 64")
	runCLI(t, "score", "-m", m, "-f", short, "-c", "100000").fails(t, 2, "larger than the training context")
	runCLI(t, "score", "-m", model(t, "TinyStories-656K-Q8_0.gguf"), "-f", paren, "-c", "64").fails(t, 1, "cannot represent the character '(' (U+0028) at byte 1368")
}

// A synthetic model with planted identity blocks: prune --remove K finds
// exactly them, and perplexity does not change.
func TestPruneFindsPlantedBlocks(t *testing.T) {
	dir := t.TempDir()
	planted := filepath.Join(dir, "planted.gguf")
	if err := fixture.IdentityBlocks(model(t, "stories260K.gguf"), planted, []int{2, 5}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "pruned.gguf")
	r := runCLI(t, "prune", "-m", planted, "-o", out, "--remove", "2", "-f", fixture.Asset(t, "text/gutenberg/pg11.txt"),
		"-c", "128", "--chunks", "8", "--eval", fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"), "--json").ok(t)
	var sum struct {
		Removed []int  `json:"removed"`
		Method  string `json:"method"`
		Scores  struct {
			Blocks []struct{ BI float64 } `json:"blocks"`
		} `json:"scores"`
		Eval []struct{ PPL float64 } `json:"eval"`
	}
	decode(t, r.stdout, &sum)
	if !reflect.DeepEqual(sum.Removed, []int{2, 5}) || sum.Method != "bi" || len(sum.Scores.Blocks) != 7 {
		t.Fatalf("%+v", sum)
	}
	if len(sum.Eval) != 2 || sum.Eval[0].PPL != sum.Eval[1].PPL {
		t.Fatalf("perplexity changed: %+v", sum.Eval)
	}
	// The pruned model is the original file again, byte for byte.
	orig, _ := os.ReadFile(model(t, "stories260K.gguf"))
	got, _ := os.ReadFile(out)
	if !bytes.Equal(orig, got) {
		t.Fatal("pruned planted model differs from the original")
	}
}

func TestPruneByScores(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "story16-f16.gguf")
	scores := filepath.Join(dir, "scores.json")
	runCLI(t, "score", "-m", in, "-f", fixture.Asset(t, "text/gutenberg/pg1661.txt"), "-c", "128", "--chunks", "6", "-o", scores, "--plot", filepath.Join(dir, "bi.svg")).ok(t)
	if st, err := os.Stat(filepath.Join(dir, "bi.svg")); err != nil || st.Size() < 1000 {
		t.Fatalf("plot: %v", err)
	}
	out := filepath.Join(dir, "out.gguf")
	// Protected blocks are never chosen, however low their scores.
	r := runCLI(t, "prune", "-m", in, "-o", out, "--scores", scores, "--remove", "50%", "--keep-first", "3", "--keep-last", "4", "--json", "--plot", filepath.Join(dir, "pruned.png")).ok(t)
	var sum struct {
		Removed []int `json:"removed"`
	}
	decode(t, r.stdout, &sum)
	if len(sum.Removed) != 8 {
		t.Fatalf("removed %v", sum.Removed)
	}
	for _, b := range sum.Removed {
		if b < 3 || b >= 12 {
			t.Fatalf("protected block %d removed", b)
		}
	}
	// The output loads in llama.cpp and evaluates.
	r = runCLI(t, "eval", "-m", out, "-f", fixture.Asset(t, "text/unseen/tinystories_last50.txt"), "-c", "128", "--chunks", "3", "--json").ok(t)
	if !strings.Contains(r.stdout, `"ppl"`) {
		t.Fatal(r.stdout)
	}
	// Scores of another model (here the pruned one) are refused.
	runCLI(t, "prune", "-m", out, "-o", filepath.Join(dir, "x.gguf"), "--scores", scores, "--remove", "2").fails(t, 1, "made for another model")
	// A size that needs protected blocks says what can be reached.
	runCLI(t, "prune", "-m", in, "--dry-run", "--scores", scores, "--target-size", "10%").fails(t, 1, "the smallest reachable size is")
	r = runCLI(t, "prune", "-m", in, "--dry-run", "--scores", scores, "--target-size", "5.5MB", "--json").ok(t)
	var ts struct {
		Removed    []int `json:"removed"`
		BytesAfter int64 `json:"bytes_after"`
	}
	decode(t, r.stdout, &ts)
	if ts.BytesAfter > 5500000 || len(ts.Removed) != 2 {
		t.Fatalf("--target-size 5.5MB: %+v", ts)
	}
}

func TestSelfCalibration(t *testing.T) {
	in := model(t, "stories260K.gguf")
	args := []string{"prune", "-m", in, "--remove", "1", "--dry-run", "--json", "-c", "64", "--chunks", "2"}
	r1 := runCLI(t, args...).ok(t)
	r2 := runCLI(t, args...).ok(t)
	if r1.stdout != r2.stdout {
		t.Fatal("self-calibration is not reproducible")
	}
	if !strings.Contains(r1.stdout, `"method": "bi (self-calibrated)"`) || !strings.Contains(r1.stderr, "writes 2 chunks of 64 tokens itself") {
		t.Fatalf("stdout %s\nstderr %s", r1.stdout, r1.stderr)
	}
	r3 := runCLI(t, append(args, "--seed", "7")...).ok(t)
	if r3.stdout == r1.stdout {
		t.Fatal("another seed gave the same scores")
	}
}

// One pass of score gives scores and an imatrix; prune --quantize uses both
// and leaves one output file, with the pruned imatrix beside it.
func TestPruneQuantizeWithImatrix(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "story16-f16.gguf")
	scores, imatrix := filepath.Join(dir, "scores.json"), filepath.Join(dir, "full.imatrix")
	runCLI(t, "score", "-m", in, "-f", fixture.Asset(t, "text/gutenberg/pg345.txt"), "-c", "128", "--chunks", "4", "-o", scores, "--imatrix-out", imatrix).ok(t)
	r := runCLI(t, "inspect", "--json", imatrix).ok(t)
	var im struct {
		Imatrix    bool `json:"imatrix"`
		Entries    int  `json:"entries"`
		BlockCount int  `json:"block_count"`
		ChunkCount int  `json:"chunk_count"`
	}
	decode(t, r.stdout, &im)
	if !im.Imatrix || im.Entries != 112 || im.BlockCount != 16 || im.ChunkCount != 4 {
		t.Fatalf("%+v", im)
	}
	out, prunedIm := filepath.Join(dir, "out.gguf"), filepath.Join(dir, "pruned.imatrix.dat")
	r = runCLI(t, "prune", "-m", in, "-o", out, "--scores", scores, "--remove", "4", "--quantize", "IQ4_XS",
		"--imatrix", imatrix, "--imatrix-out", prunedIm, "--eval", fixture.Asset(t, "text/unseen/tinystories_last50.txt"), "-c", "128", "--chunks", "3", "--json").ok(t)
	var sum struct {
		Quantized  string `json:"quantized"`
		BytesAfter int64  `json:"bytes_after"`
		Eval       []struct{ PPL float64 }
	}
	decode(t, r.stdout, &sum)
	st, err := os.Stat(out)
	if err != nil || sum.Quantized != "IQ4_XS" || sum.BytesAfter != st.Size() || len(sum.Eval) != 2 || sum.Eval[1].PPL < 1 {
		t.Fatalf("%+v (%v)", sum, err)
	}
	if names := fixture.DirNames(t, dir); !reflect.DeepEqual(names, []string{"full.imatrix", "out.gguf", "pruned.imatrix.dat", "scores.json"}) {
		t.Fatalf("files: %v", names)
	}
	r = runCLI(t, "inspect", "--json", prunedIm).ok(t)
	decode(t, r.stdout, &im)
	if im.Entries != 84 || im.BlockCount != 12 {
		t.Fatalf("pruned imatrix %+v", im)
	}
	// The pruned imatrix fits the pruned model, not the full one.
	runCLI(t, "quantize", "--imatrix", prunedIm, in, filepath.Join(dir, "x.gguf"), "Q4_K_M").fails(t, 1, "covers 12 blocks")
	runCLI(t, "quantize", in, filepath.Join(dir, "x.gguf"), "Q9_9").fails(t, 2, "unknown quantization type")
	r = runCLI(t, "quantize", "--help").ok(t)
	for _, typ := range []string{"Q4_K_M", "IQ4_XS", "Q8_0", "COPY", "needs --imatrix"} {
		if !strings.Contains(r.stdout, typ) {
			t.Errorf("quantize --help does not list %s", typ)
		}
	}
}

// A split set prunes into one file or into shards; llama.cpp loads both and
// they give the same perplexity.
func TestPruneSplitLoadsInLlama(t *testing.T) {
	dir := t.TempDir()
	src, err := gguf.OpenModel(model(t, "story16-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	shards, err := fixture.Split(src, filepath.Join(dir, "s16"), 3)
	if err != nil {
		t.Fatal(err)
	}
	merged, split := filepath.Join(dir, "merged.gguf"), filepath.Join(dir, "pruned.gguf")
	runCLI(t, "prune", "-m", shards[0], "-o", merged, "--layers", "3,8").ok(t)
	r := runCLI(t, "prune", "-m", shards[0], "-o", split, "--layers", "3,8", "--keep-split", "--json").ok(t)
	var sum struct{ Outputs []string }
	decode(t, r.stdout, &sum)
	if len(sum.Outputs) != 3 || !strings.HasSuffix(sum.Outputs[0], "pruned-00001-of-00003.gguf") {
		t.Fatalf("outputs %v", sum.Outputs)
	}
	text := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	r = runCLI(t, "eval", "-m", merged, "-m", sum.Outputs[0], "-f", text, "-c", "128", "--chunks", "3", "--json").ok(t)
	var ev []struct{ PPL float64 }
	decode(t, r.stdout, &ev)
	if len(ev) != 2 || ev[0].PPL != ev[1].PPL || ev[0].PPL < 1 {
		t.Fatalf("merged and split perplexities differ: %+v", ev)
	}
}

// Flags that cannot work are refused before any scoring.
func TestPruneRefusesEarly(t *testing.T) {
	in := model(t, "story16-f16.gguf")
	out := filepath.Join(t.TempDir(), "o.gguf")
	runCLI(t, "prune", "-m", in, "-o", out, "--remove", "2", "--quantize", "Q9").fails(t, 2, "unknown quantization type")
	runCLI(t, "prune", "-m", in, "-o", out, "--remove", "2", "--plot", "x.pdf").fails(t, 2, "must end in .svg or .png")
	runCLI(t, "prune", "-m", in, "-o", out, "--layers", "2", "--plot", "x.svg").fails(t, 2, "--layers has none")
	runCLI(t, "prune", "-m", in, "-o", out, "--remove", "2", "--eval", "/nonexistent.txt").fails(t, 1, "nonexistent.txt")
	runCLI(t, "prune", "-m", in, "-o", out, "--remove", "2", "--imatrix-out", "x.imatrix").fails(t, 2, "needs the input model's imatrix")
	runCLI(t, "score", "-m", in, "--plot", "x.jpg").fails(t, 2, "must end in .svg or .png")
}

// Multi-token-prediction blocks are not run by a decode, so a score report
// has none; prune accepts such a report and never chooses them.
func TestScoresOfMTPModel(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "mtp.gguf")
	err := fixture.Write(in, fixture.Spec{Arch: "glm4moe", Blocks: 6, Extra: []gguf.KV{
		{Key: "glm4moe.nextn_predict_layers", Value: gguf.Uint32(2)},
		{Key: "glm4moe.expert_count", Value: gguf.Uint32(4)},
		{Key: "glm4moe.expert_used_count", Value: gguf.Uint32(2)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := gguf.OpenModel(in)
	fp, _ := m.Fingerprint()
	m.Close()
	rep := prune.ScoreReport{Model: in, Fingerprint: fp, Metric: "bi", Blocks: []bi.BlockScore{{Index: 0, BI: 0.5}, {Index: 1, BI: 0.2}, {Index: 2, BI: 0.1}, {Index: 3, BI: 0.01}}}
	scores := filepath.Join(dir, "scores.json")
	if err := rep.WriteFile(scores); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "prune", "-m", in, "--scores", scores, "--remove", "2", "--keep-last", "0", "--dry-run", "--json").ok(t)
	var sum struct{ Removed []int }
	decode(t, r.stdout, &sum)
	if !reflect.DeepEqual(sum.Removed, []int{2, 3}) {
		t.Fatalf("removed %v", sum.Removed)
	}
	rep.Blocks = append(rep.Blocks, bi.BlockScore{Index: 4}, bi.BlockScore{Index: 5})
	rep.WriteFile(scores)
	runCLI(t, "prune", "-m", in, "--scores", scores, "--remove", "1", "--dry-run").fails(t, 1, "6 block scores for a model of 4 scored blocks")
}

// --force on an index-pattern architecture: refused without it, written
// with a warning on stderr (and in the JSON) where llama.cpp loads the
// result, refused where it would not load it; nothing written when refused.
func TestPruneForce(t *testing.T) {
	dir := t.TempDir()
	tok := model(t, "stories260K.gguf")
	gemma := filepath.Join(dir, "gemma2.gguf")
	l4 := filepath.Join(dir, "llama4.gguf")
	for path, arch := range map[string]string{gemma: "gemma2", l4: "llama4"} {
		s := fixture.ModelSpec{Arch: arch, Blocks: 8, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256}
		if err := fixture.RandomModel(path, tok, s); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "o.gguf")
	runCLI(t, "prune", "-m", gemma, "-o", out, "--layers", "1").fails(t, 1, "whole runs of 2")
	r := runCLI(t, "prune", "-m", gemma, "-o", out, "--layers", "1", "--force", "--json").ok(t)
	if !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, "changes its kind") {
		t.Fatalf("forced, stderr %q", r.stderr)
	}
	var res struct{ Warnings []string }
	decode(t, r.stdout, &res)
	if len(res.Warnings) != 1 {
		t.Fatalf("warnings %q", res.Warnings)
	}
	runCLI(t, "eval", "-m", out, "-f", fixture.Asset(t, "text/unseen/tinystories_last50.txt"), "-c", "64", "--chunks", "1").ok(t)
	out2 := filepath.Join(dir, "o2.gguf")
	runCLI(t, "prune", "-m", l4, "-o", out2, "--layers", "1", "--force").fails(t, 1, "would not load")
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Fatalf("refused, yet %s: %v", out2, err)
	}
}
