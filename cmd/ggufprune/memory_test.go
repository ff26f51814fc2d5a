package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
)

// A header of 10^6 tiny tensors costs tens of bytes of memory a tensor in
// inspect and prune --dry-run, not hundreds: the peak resident memory of
// each command, less that of the same command on a small model, over the
// tensors, is at most 100 bytes (53 and 68 were measured; 460 and 805 before).
func TestManyTensorsMemory(t *testing.T) {
	const n = 1_000_000
	dir := t.TempDir()
	path := filepath.Join(dir, "many.gguf")
	fixture.ManyTensors(t, path, n)
	_, small := fixture.Synthetic(t, fixture.Spec{Arch: "llama", Blocks: 4})
	for _, args := range [][]string{
		{"inspect", "%s"},
		{"prune", "-m", "%s", "--layers", "1", "--dry-run"},
	} {
		run := func(model string) int64 {
			cmd := exec.Command(os.Args[0])
			for _, s := range args {
				if s == "%s" {
					s = model
				}
				cmd.Args = append(cmd.Args, s)
			}
			cmd.Args[0] = "ggufprune"
			hwm := filepath.Join(dir, "hwm")
			cmd.Env = append(os.Environ(), "GGUFPRUNE_RUN_MAIN=1", "GGUFPRUNE_TEST_HWM="+hwm)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
			}
			b, err := os.ReadFile(hwm)
			var kb int64
			if _, err2 := fmt.Sscanf(string(b), "%d kB", &kb); err != nil || err2 != nil {
				t.Fatalf("no peak memory reported: %v %v %q", err, err2, b)
			}
			return kb << 10
		}
		base, many := run(small), run(path)
		if per := float64(many-base) / n; per > 100 {
			t.Errorf("%s: %.0f bytes a tensor (%d MiB for %d tensors, %d MiB for a small model)", args[0], per, many>>20, n, base>>20)
		} else {
			t.Logf("%s: %.0f bytes a tensor (%d and %d bytes)", args[0], per, many, base)
		}
	}
}
