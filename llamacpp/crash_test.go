package llamacpp_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/atomicfile"
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
