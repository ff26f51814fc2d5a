package surgery_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// TestMain lets the benchmarks run a prune in a child process of its own, so
// that the child's peak resident memory measures the prune alone.
func TestMain(m *testing.M) {
	if in := os.Getenv("GGUFPRUNE_BENCH_PRUNE_IN"); in != "" {
		if err := pruneOneBlock(in, os.Getenv("GGUFPRUNE_BENCH_PRUNE_OUT"), os.Getenv("GGUFPRUNE_BENCH_PRUNE_STEP")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// The peak resident memory of this process alone (rusage of a child
		// started from Go also counts the parent's memory before exec).
		status, _ := os.ReadFile("/proc/self/status")
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				fmt.Println(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")))
			}
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pruneOneBlock removes block 1 of in, writing out, or stops after a step:
// "none" (the process alone), "open" (the model and its statistics, as
// inspect), "plan" (planned, sized and checked, as a dry run).
func pruneOneBlock(in, out, step string) error {
	if step == "none" {
		return nil
	}
	m, err := gguf.OpenModel(in)
	if err != nil {
		return err
	}
	defer m.Close()
	m.Stats()
	if step == "open" {
		return nil
	}
	plan, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		return err
	}
	if _, err := plan.Size(surgery.OneFile); err != nil {
		return err
	}
	plan.CheckLlama() // a synthetic model breaks llama.cpp's rules: only its cost counts
	if step == "plan" {
		return nil
	}
	_, err = plan.Write(out, surgery.OneFile)
	return err
}

// timed runs a command after flushing dirty pages (so that no earlier write
// competes for the disk) and returns its wall time and standard output.
func timed(b *testing.B, cmd *exec.Cmd) (time.Duration, string) {
	b.Helper()
	syscall.Sync()
	cmd.Stderr = os.Stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("%v: %v", cmd.Args, err)
	}
	return time.Since(start), string(out)
}

// BenchmarkPruneVsCp prunes one block out of a generated GGUF of 1 GiB (set
// GGUFPRUNE_BENCH_GIB for more) and compares it with cp of the same file,
// both as plain cp and as cp followed by sync of the copy: prune syncs its
// output before renaming it into place, so cp+sync is the like-for-like
// comparison. Targets: time ≤ 1.2× cp, peak memory under 64 MiB whatever the
// size. Each command starts with no dirty pages (sync before each).
func BenchmarkPruneVsCp(b *testing.B) {
	gib := 1
	if s := os.Getenv("GGUFPRUNE_BENCH_GIB"); s != "" {
		fmt.Sscan(s, &gib)
	}
	dir := b.TempDir()
	in := filepath.Join(dir, "big.gguf")
	const blocks = 16
	if err := fixture.Write(in, fixture.Spec{Arch: "llama", Blocks: blocks, Embd: 4096, BlockBytes: uint64(gib) << 30 / blocks}); err != nil {
		b.Fatal(err)
	}
	st, _ := os.Stat(in)
	cpOut, out := filepath.Join(dir, "cp.gguf"), filepath.Join(dir, "out.gguf")
	var cpTime, cpSyncTime, pruneTime time.Duration
	var peakKB int64
	for i := 0; i < b.N; i++ {
		os.Remove(cpOut)
		t, _ := timed(b, exec.Command("cp", in, cpOut))
		cpTime += t
		os.Remove(cpOut)
		t, _ = timed(b, exec.Command("sh", "-c", `cp "$1" "$2" && sync "$2"`, "sh", in, cpOut))
		cpSyncTime += t
		os.Remove(out)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "GGUFPRUNE_BENCH_PRUNE_IN="+in, "GGUFPRUNE_BENCH_PRUNE_OUT="+out)
		t, hwm := timed(b, cmd)
		pruneTime += t
		var kb int64
		fmt.Sscanf(hwm, "%d kB", &kb)
		peakKB = max(peakKB, kb)
	}
	b.ReportMetric(float64(st.Size())/(1<<30), "GiB")
	b.ReportMetric(pruneTime.Seconds()/float64(b.N), "prune-s")
	b.ReportMetric(cpTime.Seconds()/float64(b.N), "cp-s")
	b.ReportMetric(pruneTime.Seconds()/cpTime.Seconds(), "ratio-to-cp")
	b.ReportMetric(pruneTime.Seconds()/cpSyncTime.Seconds(), "ratio-to-cp+sync")
	b.ReportMetric(float64(peakKB)/1024, "peak-MiB")
}
