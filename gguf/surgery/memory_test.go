package surgery_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
)

// heap is the live heap after a full collection, and the bytes allocated
// since the process started.
func heap() (live, total uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.TotalAlloc
}

// tensorCosts are bytes per tensor of each step of a prune: kept live after
// it (Open, PlanRemoval with the output's size) and allocated by it.
type tensorCosts struct {
	openLive, openAlloc, planLive, planAlloc, writeAlloc float64
}

// measure opens, plans and writes a file of n tiny tensors, removing one
// of its 4 blocks.
func measure(tb testing.TB, n int) tensorCosts {
	dir := tb.TempDir()
	in := filepath.Join(dir, "in.gguf")
	fixture.ManyTensors(tb, in, n)
	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) }
	var c tensorCosts

	live0, total0 := heap()
	m, err := gguf.OpenModel(in)
	if err != nil {
		tb.Fatal(err)
	}
	defer m.Close()
	live1, total1 := heap()
	c.openLive, c.openAlloc = per(live0, live1), per(total0, total1)

	p, err := surgery.PlanRemoval(m, []int{1}, surgery.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := p.Size(surgery.OneFile); err != nil {
		tb.Fatal(err)
	}
	live2, total2 := heap()
	c.planLive, c.planAlloc = per(live1, live2), per(total1, total2)

	if _, err := p.Write(filepath.Join(dir, "out.gguf"), surgery.OneFile); err != nil {
		tb.Fatal(err)
	}
	_, total3 := heap()
	c.writeAlloc = per(total2, total3)
	runtime.KeepAlive(m)
	runtime.KeepAlive(p)
	return c
}

// TestMemoryPerTensor holds the memory of a prune of 10^5 tiny tensors to
// what a tensor needs: its name, dims, type, offset and index slot once, in
// the columns of its file (about 57 bytes, of which 26 are the name); the
// plan's new name of a tensor that moves and a few bytes (about 15); no
// copy of the header when written, and no garbage a tensor. It was 200
// bytes live and 905 allocated to open, 97 and 810 to plan, 889 allocated
// to write (a header of 10^6 tensors cost 0.5 to 1 GiB); then 135 live to
// open, with a TensorInfo (64 bytes) a tensor.
func TestMemoryPerTensor(t *testing.T) {
	c := measure(t, 100_000)
	t.Logf("bytes per tensor: open %.0f live (%.0f allocated), plan %.0f live (%.0f allocated), write %.0f allocated",
		c.openLive, c.openAlloc, c.planLive, c.planAlloc, c.writeAlloc)
	if c.openLive > 70 || c.openAlloc > 80 || c.planLive > 20 || c.planAlloc > 24 || c.writeAlloc > 32 {
		t.Fatal("more memory per tensor than the budget: open 70 live, 80 allocated; plan 20 live, 24 allocated; write 32 allocated")
	}
}

// BenchmarkManyTensors measures the peak resident memory a tensor costs in
// a prune of a header of 10^6 tiny tensors (GGUFPRUNE_BENCH_TENSORS for
// another count), step by step, each in a child process of its own: opening
// it with its statistics (as inspect), planning the removal of a block (as
// a dry run), and writing it. Target: tens of bytes a tensor, not hundreds.
func BenchmarkManyTensors(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("GGUFPRUNE_BENCH_TENSORS"); s != "" {
		fmt.Sscan(s, &n)
	}
	dir := b.TempDir()
	in, out := filepath.Join(dir, "many.gguf"), filepath.Join(dir, "out.gguf")
	fixture.ManyTensors(b, in, n)
	peak := func(step string) float64 {
		os.Remove(out)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "GGUFPRUNE_BENCH_PRUNE_IN="+in, "GGUFPRUNE_BENCH_PRUNE_OUT="+out, "GGUFPRUNE_BENCH_PRUNE_STEP="+step)
		_, hwm := timed(b, cmd)
		var kb float64
		fmt.Sscanf(hwm, "%f kB", &kb)
		return kb * 1024
	}
	var none, open, plan, write float64
	for i := 0; i < b.N; i++ {
		none, open, plan, write = max(none, peak("none")), max(open, peak("open")), max(plan, peak("plan")), max(write, peak(""))
	}
	b.ReportMetric(float64(n), "tensors")
	b.ReportMetric((open-none)/float64(n), "open-B/tensor")
	b.ReportMetric((plan-none)/float64(n), "plan-B/tensor")
	b.ReportMetric((write-none)/float64(n), "write-B/tensor")
	b.ReportMetric(write/(1<<20), "write-peak-MiB")
}
