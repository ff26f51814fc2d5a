package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// The files that aborted the whole process inside llama.cpp (a C assertion
// or SIGFPE) now give a clear error naming the file and the key or tensor,
// exit status 1, and no output, for every command that runs a model.
func TestCrashingFilesRefused(t *testing.T) {
	src := model(t, "stories260K.gguf")
	text := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	cases := []struct {
		name, want string
		edit       fixture.Edit
	}{
		{"zero-dim", "blk.0.attn_q.weight has shape [64 0]", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
			for i := range ts {
				if ts[i].Info.Name == "blk.0.attn_q.weight" {
					ts[i].Info.Dims, ts[i].Info.Size = []uint64{64, 0}, 0
					ts[i].Data = io.NewSectionReader(bytes.NewReader(nil), 0, 0)
				}
			}
			return kvs, ts
		}},
		{"dup-token", "are both", func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
			for i, kv := range kvs {
				if kv.Key == "tokenizer.ggml.tokens" {
					a, _ := kv.Value.Array()
					var vs []gguf.Value
					for j := 0; j < a.Len(); j++ {
						vs = append(vs, a.Index(j))
					}
					vs[400] = vs[300]
					kvs[i].Value, _ = gguf.NewArray(gguf.TypeString, vs)
				}
			}
			return kvs, ts
		}},
		{"int-tokens", "tokenizer.ggml.tokens is an array of 3 uint32", fixture.EditKV("tokenizer.ggml.tokens", fixture.Uint32s(1, 2, 3))},
		{"experts-used", "llama.expert_used_count is 2 but llama.expert_count is 0", fixture.EditKV("llama.expert_used_count", gguf.Uint32(2))},
		{"experts-1000", "llama.expert_count is 1000", fixture.EditKV("llama.expert_count", gguf.Uint32(1000))},
		{"kv-heads-zero", "0 KV heads", fixture.EditKV("llama.attention.head_count_kv", fixture.Uint32s(4, 0, 4, 4, 4))},
		{"block-count-9", "blocks 5-8 have no tensors", fixture.EditKV("llama.block_count", gguf.Uint32(9))},
		{"block-count-0", "llama.block_count is 0", fixture.EditKV("llama.block_count", gguf.Uint32(0))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, c.name+".gguf")
			if err := fixture.Rewrite(src, in, c.edit); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out.gguf")
			for _, args := range [][]string{
				{"eval", "-m", in, "-f", text, "-c", "64", "--chunks", "2"},
				{"score", "-m", in, "-f", text, "-c", "64", "--chunks", "2"},
				{"prune", "-m", in, "-f", text, "-c", "64", "--chunks", "2", "--remove", "1", "-o", out},
				{"quantize", in, out, "Q8_0"},
			} {
				r := runCLI(t, args...)
				if r.code != 1 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, in) {
					t.Errorf("%s: exit %d, stderr %q (want %q naming the file)", args[0], r.code, r.stderr, c.want)
				}
			}
			if names := fixture.DirNames(t, dir); len(names) != 1 {
				t.Fatalf("left behind: %v", names)
			}
		})
	}
	// Legal alignments below ggml's 32 bytes run (the file is read instead of mapped).
	for _, align := range []uint32{1, 8, 16} {
		in := filepath.Join(t.TempDir(), "aligned.gguf")
		if err := fixture.Rewrite(src, in, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
			return fixture.SetKV(append(kvs, gguf.KV{Key: "x.pad", Value: gguf.String("abc")}), "general.alignment", gguf.Uint32(align)), ts
		}); err != nil {
			t.Fatal(err)
		}
		runCLI(t, "eval", "-m", in, "-f", text, "-c", "64", "--chunks", "2").ok(t)
	}
}

// Memory and time follow what was asked for, not what a file or text claims.
func TestBoundedByRequest(t *testing.T) {
	dir := t.TempDir()
	src := model(t, "stories260K.gguf")
	// A tensor named for block 2^32 and a block count of 2^20: refused,
	// naming them, in little memory.
	far := filepath.Join(dir, "far.gguf")
	if err := fixture.Rewrite(src, far, func(kvs []gguf.KV, ts []gguf.WriterTensor) ([]gguf.KV, []gguf.WriterTensor) {
		for i := range ts {
			if ts[i].Info.Name == "blk.4.attn_q.weight" {
				ts[i].Info.Name = "blk.4294967296.attn_q.weight"
			}
		}
		return kvs, ts
	}); err != nil {
		t.Fatal(err)
	}
	const bound = 96 << 20
	r, rss := runCLIRSS(t, "inspect", far)
	if r.code != 1 || !strings.Contains(r.stderr, "blk.4294967296.attn_q.weight belongs to block 4294967296") || rss > bound {
		t.Fatalf("exit %d, %d MiB, stderr %q", r.code, rss>>20, r.stderr)
	}
	huge := filepath.Join(dir, "huge.gguf")
	if err := fixture.Rewrite(src, huge, fixture.EditKV("llama.block_count", gguf.Uint32(1<<20))); err != nil {
		t.Fatal(err)
	}
	r, rss = runCLIRSS(t, "inspect", huge)
	if r.code != 1 || !strings.Contains(r.stderr, "blocks 5-1048575 have no tensors") || rss > bound || len(r.stdout) > 0 {
		t.Fatalf("exit %d, %d MiB, stderr %q", r.code, rss>>20, r.stderr)
	}
	runCLI(t, "prune", "-m", huge, "--layers", "1", "-o", filepath.Join(dir, "x.gguf")).fails(t, 1, "have no tensors")

	// A 48 MB one-line text: with --chunks only its beginning is read, and the
	// perplexity equals that of the beginning alone.
	eval := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	head, err := os.ReadFile(eval)
	if err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(dir, "long.txt")
	f, _ := os.Create(long)
	f.Write(head)
	line := bytes.Repeat([]byte("the cat sat on the mat and "), 1<<16)
	for i := 0; i < 27; i++ {
		f.Write(line)
	}
	f.Close()
	a := runCLI(t, "eval", "-m", src, "-f", eval, "-c", "64", "--chunks", "3", "--json").ok(t)
	b, rss := runCLIRSS(t, "eval", "-m", src, "-f", long, "-c", "64", "--chunks", "3", "--json")
	if b.code != 0 || a.stdout != strings.ReplaceAll(b.stdout, long, eval) || rss > 256<<20 {
		t.Fatalf("exit %d, %d MiB\n%s\n%s\n%s", b.code, rss>>20, a.stdout, b.stdout, b.stderr)
	}
	t.Logf("peak memory: eval of the %d MB text with --chunks 3: %d MiB", 27*len(line)>>20, rss>>20)
	r, rss = runCLIRSS(t, "score", "-m", src, "-f", long, "-c", "64", "--chunks", "2")
	if r.code != 0 || rss > 256<<20 {
		t.Fatalf("score: exit %d, %d MiB, stderr %q", r.code, rss>>20, r.stderr)
	}

	// Files that are not regular files are refused without blocking on them.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan []result)
	go func() {
		done <- []result{
			runCLI(t, "eval", "-m", src, "-f", fifo),
			runCLI(t, "eval", "-m", fifo, "-f", eval),
			runCLI(t, "score", "-m", src, "-f", "/dev/zero"),
		}
	}()
	select {
	case rs := <-done:
		for _, r := range rs {
			r.fails(t, 1, "not a regular file")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a FIFO or device blocked the command")
	}

	// Thread counts are capped, and say so; long block lists are bounded.
	r = runCLI(t, "eval", "-m", src, "-f", eval, "-c", "64", "--chunks", "2", "-t", "10000").ok(t)
	if !strings.Contains(r.stderr, "-t 10000: using") {
		t.Fatalf("stderr %q", r.stderr)
	}
	var ranges []string
	for i := 0; i < 40; i++ {
		ranges = append(ranges, "0-4095")
	}
	r, rss = runCLIRSS(t, "prune", "-m", src, "--layers", strings.Join(ranges, ","), "--dry-run")
	if r.code != 1 || !strings.Contains(r.stderr, "out of range") || rss > bound {
		t.Fatalf("exit %d, %d MiB, stderr %q", r.code, rss>>20, r.stderr)
	}
	runCLI(t, "prune", "-m", src, "--layers", "70000", "--dry-run").fails(t, 2, "past any model's blocks")
}

// Outputs: never a device, never replaced without --overwrite (and then
// with the permissions it had), everything checked before anything is
// written; values out of range are usage errors.
func TestOutputsAndValues(t *testing.T) {
	dir := t.TempDir()
	src := model(t, "stories260K.gguf")
	out := filepath.Join(dir, "out.gguf")
	runCLI(t, "prune", "-m", src, "--layers", "2", "-o", "/dev/null").fails(t, 1, "not a regular file")
	runCLI(t, "prune", "-m", src, "--layers", "2", "-o", "-").fails(t, 2, "standard output")
	runCLI(t, "prune", "-m", src, "--layers", "2", "-o", dir+"/").fails(t, 1, "folder")
	runCLI(t, "prune", "-m", src, "--layers", "2", "-o", out).ok(t)
	runCLI(t, "prune", "-m", src, "--layers", "3", "-o", out).fails(t, 1, "exists (--overwrite replaces it)")
	os.Chmod(out, 0o600)
	runCLI(t, "prune", "-m", src, "--layers", "3", "-o", out, "--overwrite").ok(t)
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
		t.Fatalf("a 0600 output became %v", st.Mode().Perm())
	}
	runCLI(t, "quantize", src, out, "Q8_0").fails(t, 1, "exists")
	scores := filepath.Join(dir, "s.json")
	eval := fixture.Asset(t, "text/unseen/tinystories_last50.txt")
	runCLI(t, "score", "-m", src, "-f", eval, "-c", "64", "--chunks", "2", "-o", scores).ok(t)
	before := fixture.DirNames(t, dir)
	// Nothing is written when a later output or the evaluation text fails.
	o2 := filepath.Join(dir, "o2.gguf")
	runCLI(t, "prune", "-m", src, "--scores", scores, "--remove", "1", "-o", o2, "--plot", filepath.Join(dir, "no", "p.svg")).fails(t, 1, "no such file")
	short := filepath.Join(dir, "short.txt")
	os.WriteFile(short, []byte("Once upon a time."), 0o644)
	runCLI(t, "prune", "-m", src, "--scores", scores, "--remove", "1", "-o", o2, "--eval", short).fails(t, 1, "too short")
	runCLI(t, "prune", "-m", src, "--scores", scores, "--target-size", "100%", "-o", o2).fails(t, 1, "no block needs to go")
	runCLI(t, "prune", "-m", src, "--scores", scores, "--target-size", "10TB", "-o", o2).fails(t, 1, "no block needs to go")
	os.Remove(short)
	if after := fixture.DirNames(t, dir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("written: %v, before: %v", after, before)
	}
	for _, v := range []string{"NaN", "1e19", "9223372036854775807"} {
		runCLI(t, "prune", "-m", src, "--scores", scores, "--target-size", v, "--dry-run").fails(t, 2, "--target-size")
	}
	runCLI(t, "prune", "-m", src, "--scores", scores, "--remove", "nan%", "--dry-run").fails(t, 2, "--remove")
	runCLI(t, "prune", "--layers", "1", "-o", o2).fails(t, 2, "-m is required")
	runCLI(t, "eval", "-f", eval).fails(t, 2, "-m is required")
}

// An interrupt while writing or quantizing stops the command with status
// 130 and leaves no temporary file.
func TestInterruptLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.gguf")
	if err := fixture.RandomModel(big, model(t, "stories260K.gguf"), fixture.ModelSpec{Blocks: 6, Embd: 1024, FF: 2816, Heads: 16, KVHeads: 4, Ctx: 256}); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	for _, args := range [][]string{
		{"prune", "-m", big, "--layers", "2", "-o", filepath.Join(outDir, "p.gguf")},
		{"quantize", big, filepath.Join(outDir, "q.gguf"), "Q4_K_M"},
		{"prune", "-m", big, "--layers", "2", "-o", filepath.Join(outDir, "pq.gguf"), "--quantize", "Q4_K_M"},
	} {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "GGUFPRUNE_RUN_MAIN=1")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Interrupt once the output's temporary file exists (for prune
		// --quantize, the quantizer's, beside the pruned intermediate).
		out := filepath.Base(args[len(args)-1])
		if strings.Contains(strings.Join(args, " "), "--quantize") {
			out = filepath.Base(args[6])
		} else if args[0] == "quantize" {
			out = filepath.Base(args[2])
		}
		deadline := time.Now().Add(60 * time.Second)
		for found := false; !found && time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			for _, n := range fixture.DirNames(t, outDir) {
				found = found || strings.HasPrefix(n, "."+out+".tmp-")
			}
		}
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 130 || !strings.Contains(errb.String(), "interrupt: stopped") {
			t.Fatalf("%s: %v, stderr %q", args[0], err, errb.String())
		}
		if names := fixture.DirNames(t, outDir); len(names) != 0 {
			t.Fatalf("%v left %v", args, names)
		}
	}
}
