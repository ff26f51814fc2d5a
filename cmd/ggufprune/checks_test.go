package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/prune"
)

// Task files are checked before any model runs: a task too long for the
// context is refused from its bytes (not after tokenizing 25 MB four
// times), text that is not UTF-8 and multiple-choice offsets that do not say
// where their task is are refused naming the file, the task or the byte.
func TestTaskFileChecks(t *testing.T) {
	dir := t.TempDir()
	m := model(t, "stories260K.gguf")

	long := filepath.Join(dir, "long.txt")
	os.WriteFile(long, []byte(strings.Repeat("The cat sat on the mat. ", 1<<20)+"\n0\na\nb\nc\nd\n"), 0o644)
	r, rss := runCLIRSS(t, "eval", "--hellaswag", long, "-m", m, "-c", "128")
	if r.code != 1 || !strings.Contains(r.stderr, long+": task 1: ") || !strings.Contains(r.stderr, "more than the context of 128 tokens can hold") || r.stdout != "" || rss > 256<<20 {
		t.Fatalf("exit %d, %d MiB, stdout %q, stderr %q", r.code, rss>>20, r.stdout, r.stderr)
	}
	t.Logf("peak memory refusing a %d MB HellaSwag task: %d MiB", 25, rss>>20)

	bad := filepath.Join(dir, "bad")
	for _, c := range []struct {
		flag, data, want string
	}{
		{"--hellaswag", "ctx\n0\na\nb\xffc\nc\nd\n", ": hellaswag file: not UTF-8 text (invalid byte 0xff at offset 9)"},
		{"--winogrande", "0,a _ b,x\xc3\x28,y,1\n", ": winogrande file: not UTF-8 text (invalid byte 0xc3 at offset 9)"},
		{"--multiple-choice", string(multipleChoice(nil, [2]string{"Q1", "yes"}, [2]string{"Q2", "n\xffo"})), ": multiple-choice file: task 2 (byte 74): not UTF-8 text (invalid byte 0xff at offset 89)"},
		{"--multiple-choice", string(multipleChoice(map[int]uint32{1: 1000}, [2]string{"Q1", "yes"}, [2]string{"Q2", "no"})), ": multiple-choice file: task 2: offset 1000 is past the end of the file (134 bytes)"},
		{"--multiple-choice", string(multipleChoice(map[int]uint32{1: 0xfffffffe}, [2]string{"Q1", "yes"}, [2]string{"Q2", "no"})), ": multiple-choice file: task 2: offset 4294967294 (-2 as a signed number) is past the end"},
		{"--multiple-choice", string(multipleChoice(map[int]uint32{1: 20}, [2]string{"Q1", "yes"}, [2]string{"Q2", "no"})), ": multiple-choice file: task 2: offset 20 overlaps task 1 (which ends at byte 74)"},
		{"--multiple-choice", string(multipleChoice(map[int]uint32{0: 0}, [2]string{"Q1", "yes"}, [2]string{"Q2", "no"})), ": multiple-choice file: task 1: offset 0 is inside the task count and offsets (the first task starts at byte 12)"},
	} {
		os.WriteFile(bad, []byte(c.data), 0o644)
		r := runCLI(t, "eval", c.flag, bad, "-m", m, "-c", "64")
		r.fails(t, 1, bad+c.want)
		if r.stdout != "" {
			t.Fatalf("%s: output %q", c.flag, r.stdout)
		}
	}
}

// multipleChoice writes llama-perplexity's multiple-choice format: tasks of
// a question and one answer (labelled right) besides "wrong", with the
// offsets of its table replaced as given (by task, from 0).
func multipleChoice(offsets map[int]uint32, tasks ...[2]string) []byte {
	u32 := func(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
	str := func(b []byte, s string) []byte { return append(u32(b, uint32(len(s))), s...) }
	var body []byte
	var offs []uint32
	for _, t := range tasks {
		offs = append(offs, uint32(4+4*len(tasks)+len(body)))
		body = str(body, t[0])
		for set := 0; set < 2; set++ {
			body = str(str(u32(body, 2), t[1]), "wrong")
			body = u32(u32(body, 1), 0)
		}
	}
	for i, o := range offsets {
		offs[i] = o
	}
	out := u32(nil, uint32(len(tasks)))
	for _, o := range offs {
		out = u32(out, o)
	}
	return append(out, body...)
}

// A score report is refused when its numbers cannot be scores: a loss
// metric without losses (every block would tie), BI or angular distance out
// of their ranges. A large finite loss prints in a few digits.
func TestScoreReportChecks(t *testing.T) {
	dir := t.TempDir()
	in := model(t, "stories260K.gguf")
	g, err := gguf.OpenModel(in)
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := g.Fingerprint()
	g.Close()
	blocks := func(edit func(b []bi.BlockScore)) []bi.BlockScore {
		b := []bi.BlockScore{{Index: 0, BI: 0.5, Angular: 0.3, Loss: 3.1}, {Index: 1, BI: 0.2, Angular: 0.2, Loss: 2.9}, {Index: 2, BI: 0.1, Angular: 0.1, Loss: 2.8}, {Index: 3, BI: 0.05, Angular: 0.05, Loss: 2.7}, {Index: 4, BI: 0.3, Angular: 0.25, Loss: 3.0}}
		edit(b)
		return b
	}
	scores := filepath.Join(dir, "scores.json")
	write := func(metric string, b []bi.BlockScore) {
		t.Helper()
		rep := prune.ScoreReport{Model: in, Fingerprint: fp, Metric: metric, Blocks: b}
		if err := rep.WriteFile(scores); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"prune", "-m", in, "--scores", scores, "--remove", "1", "--dry-run"}
	for _, c := range []struct {
		metric string
		edit   func(b []bi.BlockScore)
		want   string
	}{
		{"ppl", func(b []bi.BlockScore) {
			for i := range b {
				b[i].Loss = 0 // left out of the file
			}
		}, "a ppl score report whose blocks carry no loss"},
		{"ppl", func(b []bi.BlockScore) { b[2].Loss = 0 }, "a ppl score report with no loss for block 2 (1 of its 5 blocks carry none"},
		{"kld", func(b []bi.BlockScore) {
			for i := range b {
				b[i].Loss = 0
			}
		}, "a kld score report whose blocks carry no loss"},
		{"bi", func(b []bi.BlockScore) { b[1].BI = 1e308 }, "block 1: BI 1e+308 is not in [0, 2]"},
		{"bi", func(b []bi.BlockScore) { b[1].BI = -1e308 }, "block 1: BI -1e+308 is not in [0, 2]"},
		{"bi", func(b []bi.BlockScore) { b[3].Angular = 1.5 }, "block 3: angular distance 1.5 is not in [0, 1]"},
	} {
		write(c.metric, blocks(c.edit))
		r := runCLI(t, args...)
		r.fails(t, 1, scores+": "+c.want)
		if r.stdout != "" {
			t.Fatalf("%s: output %q", c.want, r.stdout)
		}
	}
	// A kld report may leave out a divergence of exactly 0 (a block that
	// changes nothing), as the score command writes it.
	write("kld", blocks(func(b []bi.BlockScore) { b[3].Loss = 0 }))
	r := runCLI(t, args...).ok(t)
	if !strings.Contains(r.stdout, "removed") {
		t.Fatalf("%s", r.stdout)
	}
	write("kld", blocks(func(b []bi.BlockScore) { b[0].Loss = 1e300 }))
	r = runCLI(t, args...).ok(t)
	if !strings.Contains(r.stdout, "1e+300") {
		t.Fatalf("%s", r.stdout)
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if len(line) > 200 {
			t.Fatalf("a %d-byte line: %q", len(line), line)
		}
	}
}

// An output folder that takes no new file (read-only, or removed while it
// is the working folder) is refused by every command before any work,
// naming the output, not a temporary file. Each command is given an input
// that fails only once the work starts (a calibration text whose invalid
// byte lies past the first MiB, which only tokenizing reads; an imatrix
// that is not one): the output's error coming first shows the order.
func TestUnwritableOutputFolder(t *testing.T) {
	dir := t.TempDir()
	src := model(t, "stories260K.gguf")
	late := filepath.Join(dir, "late.txt")
	head, err := os.ReadFile(fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Create(late)
	for n := 0; n <= 1<<20; n += len(head) {
		f.Write(head)
	}
	f.Write([]byte("caf\xe9\n"))
	f.Close()
	runCLI(t, "score", "-m", src, "-f", late, "-c", "64").fails(t, 1, "not UTF-8 text")
	notImatrix := filepath.Join(dir, "not.imatrix")
	os.WriteFile(notImatrix, []byte("not an importance matrix"), 0o644)

	ro := readOnlyFolder(t)
	out := func(name string) string { return filepath.Join(ro, name) }
	ok := filepath.Join(dir, "ok.gguf")
	cases := []struct {
		args []string
		out  string
	}{
		{[]string{"score", "-m", src, "-f", late, "-c", "64", "-o", out("s.json")}, out("s.json")},
		{[]string{"score", "-m", src, "-f", late, "-c", "64", "--plot", out("s.svg")}, out("s.svg")},
		{[]string{"score", "-m", src, "-f", late, "-c", "64", "--imatrix-out", out("s.imatrix")}, out("s.imatrix")},
		{[]string{"prune", "-m", src, "-f", late, "-c", "64", "--remove", "1", "-o", out("p.gguf")}, out("p.gguf")},
		{[]string{"prune", "-m", src, "-f", late, "-c", "64", "--remove", "1", "-o", ok, "--plot", out("p.svg")}, out("p.svg")},
		{[]string{"prune", "-m", src, "-f", late, "-c", "64", "--remove", "1", "-o", ok, "--imatrix", notImatrix, "--imatrix-out", out("p.imatrix")}, out("p.imatrix")},
		{[]string{"prune", "-m", src, "--layers", "1", "-o", out("l.gguf")}, out("l.gguf")},
		{[]string{"quantize", "--imatrix", notImatrix, src, out("q.gguf"), "Q8_0"}, out("q.gguf")},
		{[]string{"eval", "--base", src, "-m", src, "-f", late, "-c", "64", "--kl-divergence-base", out("base.logits")}, out("base.logits")},
	}
	if ro == "" {
		t.Log("running as root, and /sys takes new files: no folder refuses them")
		cases = nil
	}
	for _, c := range cases {
		r := runCLI(t, c.args...)
		r.fails(t, 1, "output "+c.out+": cannot create a file in its folder "+ro+": ")
		if strings.Contains(r.stderr, ".tmp-") || r.stdout != "" {
			t.Fatalf("%v: stdout %q, stderr %q", c.args, r.stdout, r.stderr)
		}
	}
	if _, err := os.Stat(ok); err == nil {
		t.Fatal("an output was written")
	}

	// The working folder removed: "out.json" is in a folder that still
	// reads as one but takes no file.
	gone := filepath.Join(t.TempDir(), "gone")
	os.Mkdir(gone, 0o755)
	cmd := exec.Command("sh", "-c", `cd "$1" && rmdir "$1" && shift && exec "$@"`, "sh", gone, os.Args[0], "score", "-m", src, "-f", late, "-c", "64", "-o", "out.json")
	cmd.Env = append(os.Environ(), "GGUFPRUNE_RUN_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), "output out.json: cannot create a file in its folder .: no such file or directory") {
		t.Fatalf("removed working folder: %v, exit %d, stderr %q", err, code, stderr.String())
	}
}

// readOnlyFolder is a folder that takes no new file: one without write
// permission, or for root (whom permissions do not stop) /sys, which takes
// none from anyone; "" where there is none.
func readOnlyFolder(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		os.Chmod(dir, 0o555)
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return dir
	}
	if f, err := os.CreateTemp("/sys", "probe"); err == nil {
		f.Close()
		os.Remove(f.Name())
		return ""
	}
	return "/sys"
}
