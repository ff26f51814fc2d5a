package llamacpp_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
)

// A crash inside llama.cpp (ggml's abort, a division by zero in C,
// std::terminate) ends the process with ExitCrash, says so on stderr, and
// removes the temporary files the process was writing. The crash runs in a
// child: this test binary started again with GGUFPRUNE_TEST_CRASH set.
func TestCrashExitStatus(t *testing.T) {
	if kind := os.Getenv("GGUFPRUNE_TEST_CRASH"); kind != "" {
		p, err := atomicfile.Create(filepath.Join(os.Getenv("GGUFPRUNE_TEST_DIR"), "out.gguf"))
		if err != nil {
			t.Fatal(err)
		}
		p.File().WriteString("half a model")
		k, _ := strconv.Atoi(kind)
		llamacpp.TestCrash(k)
		t.Fatal("llama.cpp did not crash")
	}
	for kind, want := range []string{"llama.cpp aborted: ", "arithmetic fault (SIGFPE)", "llama.cpp aborted (SIGABRT)"} {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashExitStatus$", "-test.count=1")
		cmd.Env = append(os.Environ(), "GGUFPRUNE_TEST_CRASH="+strconv.Itoa(kind), "GGUFPRUNE_TEST_DIR="+dir)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != llamacpp.ExitCrash || !strings.Contains(string(out), want) {
			t.Errorf("crash %d: %v, output:\n%s", kind, err, out)
		}
		es, _ := os.ReadDir(dir)
		if len(es) != 0 {
			t.Errorf("crash %d left %v", kind, es[0].Name())
		}
	}
}

// A model truncated while llama.cpp reads it through its memory map (a
// user re-downloading or syncing it) ends the process with status 1 and a
// message that says so, removing the temporary files, instead of Go's
// SIGBUS crash; the model is decoded in a child, as above.
func TestTruncatedWhileMapped(t *testing.T) {
	if path := os.Getenv("GGUFPRUNE_TEST_TRUNCATE"); path != "" {
		p, err := atomicfile.Create(filepath.Join(filepath.Dir(path), "out.gguf"))
		if err != nil {
			t.Fatal(err)
		}
		p.File().WriteString("half a model")
		m, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := m.NewContext(llamacpp.ContextParams{NCtx: 64, Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(path)
		if err := os.Truncate(path, st.Size()/4); err != nil {
			t.Fatal(err)
		}
		toks := make([]int32, 64)
		for i := range toks {
			toks[i] = int32(i + 1)
		}
		c.Decode(toks, 0, 0)
		t.Fatal("decoding a truncated mapped model did not fault")
	}
	dir := t.TempDir()
	src, err := os.ReadFile(fixture.Asset(t, "models/story16-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.gguf")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTruncatedWhileMapped$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GGUFPRUNE_TEST_TRUNCATE="+path)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "truncated or replaced while llama.cpp read it") {
		t.Fatalf("%v, output:\n%s", err, out)
	}
	es, _ := os.ReadDir(dir)
	if len(es) != 1 {
		t.Fatalf("left %v", es)
	}
}
