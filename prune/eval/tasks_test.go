package eval

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// std::mt19937's reference values: the C++ standard's 10000th output for the
// default seed, and the first outputs for seed 1.
func TestMT19937(t *testing.T) {
	m := newMT19937(5489)
	var v uint32
	for i := 0; i < 10000; i++ {
		v = m.next()
	}
	if v != 4123659995 {
		t.Fatalf("10000th output %d", v)
	}
	m = newMT19937(1)
	for _, want := range []uint32{1791095845, 4282876139, 3093770124, 4005303368, 491263} {
		if got := m.next(); got != want {
			t.Fatalf("seed 1: %d, want %d", got, want)
		}
	}
}

// Draws follow llama-perplexity's samplers: without replacement, or swap-remove.
func TestDraws(t *testing.T) {
	all := make([]task, 10042)
	for i := range all {
		all[i].index = i
	}
	var got []int
	for _, tk := range drawWithoutReplacement(all, 5) {
		got = append(got, tk.index)
	}
	if want := []int{4187, 10013, 7233, 9363, 1}; !equalInts(got, want) {
		t.Fatalf("HellaSwag draw %v, want %v", got, want)
	}
	got = got[:0]
	for _, tk := range drawSwapRemove(all[:1267], 5) {
		got = append(got, tk.index)
	}
	if want := []int{528, 1262, 911, 1178, 0}; !equalInts(got, want) {
		t.Fatalf("WinoGrande draw %v, want %v", got, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Benchmarks whose wrong answers are noise: a model trained on such stories
// cannot miss them. One task's scores are recomputed here from the logits.
func TestTasks(t *testing.T) {
	ctx := context.Background()
	model := fixture.Asset(t, "models/story16-f16.gguf")
	dir := t.TempDir()
	noise := []string{"zq vex plor umbrage kettle.", "seven under of the the quickly moss.", "xylo frump grint wob."}
	hs := []string{
		"Once upon a time, there was a little girl named Lily.", "She loved to play outside in the sun.",
		"One day, Tim went to the park with his mom.", "He saw a big red ball on the grass.",
		"The cat was very hungry.", "It wanted to eat some food.",
		"Sue and her friend went to the beach.", "They built a big sand castle.",
	}
	var b strings.Builder
	for i := 0; i < len(hs); i += 2 {
		gold := i / 2 % 4
		b.WriteString(hs[i] + "\n" + string(rune('0'+gold)) + "\n")
		k := 0
		for j := 0; j < 4; j++ {
			if j == gold {
				b.WriteString(hs[i+1] + "\n")
			} else {
				b.WriteString(noise[k] + "\n")
				k++
			}
		}
	}
	hsFile := filepath.Join(dir, "hs.txt")
	os.WriteFile(hsFile, []byte(b.String()), 0o644)
	wgFile := filepath.Join(dir, "wg.csv")
	os.WriteFile(wgFile, []byte("index,sentence,option1,option2,answer\n"+
		"0,Once upon a time there was a little girl named _. She loved to play with her toys.,Lily,Zqxv,1\n"+
		"1,\"Tim had a big red ball, and _ liked to play with it in the park every day.\",plorb,he,2\n"), 0o644)
	mcFile := filepath.Join(dir, "mc.bin")
	os.WriteFile(mcFile, mcBytes([]mcTask{
		{"Once upon a time, there was a little", []string{"girl named Lily.", "zq vex plor.", "umbrage kettle grint."}, 0},
		{"The sun was shining and the birds were", []string{"frump wob xylo.", "singing in the trees."}, 1},
	}), 0o644)
	o := runner.Options{Ctx: 128, Threads: 2}
	for _, c := range []struct {
		kind TaskKind
		file string
		n    int
	}{{HellaSwag, hsFile, 4}, {WinoGrande, wgFile, 2}, {MultipleChoice, mcFile, 2}} {
		rs, err := EvaluateTasks(ctx, c.kind, c.file, 0, []string{model}, o)
		if err != nil {
			t.Fatal(err)
		}
		r := rs[0]
		if r.Tasks != c.n || r.Correct != c.n || r.Accuracy != 1 || r.High > 1 || r.Low <= 0 {
			t.Fatalf("%s: %+v", c.kind, r)
		}
	}
	// One HellaSwag task recomputed: each ending's mean log-probability of
	// the tokens after the part all four share.
	rs, _ := EvaluateTasks(ctx, HellaSwag, hsFile, 1, []string{model}, o)
	d := rs[0].PerTask[0]
	lm, err := llamacpp.LoadModel(model, llamacpp.ModelParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	lines := strings.Split(b.String(), "\n")[6*d.Index : 6*d.Index+6]
	var seqs [][]int32
	for j := 0; j < 4; j++ {
		s, _ := lm.Tokenize(lines[0]+" "+lines[2+j], true)
		seqs = append(seqs, s)
	}
	cp := 0
	for cp < len(seqs[0]) && seqs[1][cp] == seqs[0][cp] && seqs[2][cp] == seqs[0][cp] && seqs[3][cp] == seqs[0][cp] {
		cp++
	}
	c, _ := lm.NewContext(ctxParams(128))
	defer c.Close()
	for j, s := range seqs {
		c.ClearMemory()
		if err := c.Decode(s, 0, 0); err != nil {
			t.Fatal(err)
		}
		var sum float64
		for p := cp; p < len(s); p++ {
			z, _ := c.Logits(p - 1)
			m := math.Inf(-1)
			for _, v := range z {
				m = math.Max(m, float64(v))
			}
			var e float64
			for _, v := range z {
				e += math.Exp(float64(v) - m)
			}
			sum += float64(z[s[p]]) - m - math.Log(e)
		}
		if want := sum / float64(len(s)-cp); math.Abs(d.Scores[j]-want) > 1e-5 {
			t.Fatalf("ending %d: score %v, recomputed %v", j, d.Scores[j], want)
		}
	}
}

// ctxParams is a plain context of n tokens for the test.
func ctxParams(n int) llamacpp.ContextParams { return llamacpp.ContextParams{NCtx: n, Threads: 2} }

type mcTask struct {
	q       string
	answers []string
	right   int
}

func mcBytes(ts []mcTask) []byte {
	var body []byte
	u32 := func(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
	str := func(b []byte, s string) []byte { return append(u32(b, uint32(len(s))), s...) }
	var offs []uint32
	head := 4 + 4*len(ts)
	for _, t := range ts {
		offs = append(offs, uint32(head+len(body)))
		body = str(body, t.q)
		for set := 0; set < 2; set++ {
			body = u32(body, uint32(len(t.answers)))
			for _, a := range t.answers {
				body = str(body, a)
			}
			for i := range t.answers {
				l := uint32(0)
				if i == t.right {
					l = 1
				}
				body = u32(body, l)
			}
		}
	}
	out := u32(nil, uint32(len(ts)))
	for _, o := range offs {
		out = u32(out, o)
	}
	return append(out, body...)
}

// Damaged task files are refused naming the file, the task and the problem.
func TestBadTaskFiles(t *testing.T) {
	dir := t.TempDir()
	model := fixture.Asset(t, "models/stories260K.gguf")
	good := mcBytes([]mcTask{{"A question", []string{"yes", "no"}, 0}})
	long := strings.Repeat("word ", 300)
	for _, c := range []struct {
		kind TaskKind
		data string
		want string
	}{
		{HellaSwag, "ctx\n0\na\nb\nc\n", "5 lines, not a multiple of 6"},
		{HellaSwag, "ctx\n4\na\nb\nc\nd\n", "task 1 (line 2): gold ending \"4\""},
		{HellaSwag, long + "\n0\na\nb\nc\nd\n", "task 1: "},
		{WinoGrande, "0,no blank here,a,b,1\n", "no _ in the sentence"},
		{WinoGrande, "h\n0,a _ b,x,y,3\n", "answer \"3\" is not 1 or 2"},
		{MultipleChoice, string(good[:len(good)-3]), "task 1 (byte 8): truncated"},
		{MultipleChoice, "\x00\x00\x00\x00", "no task count"},
		// Not UTF-8, named by the byte's offset in the file.
		{HellaSwag, "ctx\n0\na\nb\xffc\nc\nd\n", "hellaswag file: not UTF-8 text (invalid byte 0xff at offset 9)"},
		{HellaSwag, "ctx\n0\na\nb\nc\nd\xe2\x82", "invalid byte 0xe2 at offset 13"}, // a character cut by the end
		{WinoGrande, "0,a _ b,x\xc3\x28,y,1\n", "winogrande file: not UTF-8 text (invalid byte 0xc3 at offset 9)"},
		{MultipleChoice, string(mcBytes([]mcTask{{"A question", []string{"yes", "n\xffo"}, 0}})), "task 1 (byte 8): not UTF-8 text (invalid byte 0xff at offset 38)"},
	} {
		p := filepath.Join(dir, "bad")
		os.WriteFile(p, []byte(c.data), 0o644)
		_, err := EvaluateTasks(context.Background(), c.kind, p, 0, []string{model}, runner.Options{Ctx: 64})
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: %v (want %q)", c.kind, c.data[:min(20, len(c.data))], err, c.want)
		}
	}
}

// Multiple-choice offsets must say where each task is, as llama-perplexity
// reads them when it draws tasks: anything else is refused naming the task.
func TestMultipleChoiceOffsets(t *testing.T) {
	good := mcBytes([]mcTask{{"Q1", []string{"yes", "no"}, 0}, {"Q2", []string{"a", "b"}, 1}})
	first := binary.LittleEndian.Uint32(good[4:])
	second := binary.LittleEndian.Uint32(good[8:])
	if _, err := parseMultipleChoice(good); err != nil || first != 12 {
		t.Fatalf("a good file: %v (first task at %d)", err, first)
	}
	for _, c := range []struct {
		task int // from 0
		off  uint32
		want string
	}{
		{1, uint32(len(good)) + 100, fmt.Sprintf("task 2: offset %d is past the end of the file (%d bytes)", len(good)+100, len(good))},
		{1, 0xffffffff, "task 2: offset 4294967295 (-1 as a signed number) is past the end"},
		{0, 4, "task 1: offset 4 is inside the task count and offsets (the first task starts at byte 12)"},
		{0, 13, "task 1: offset 13, but the first task starts at byte 12"},
		{1, first + 1, fmt.Sprintf("task 2: offset 13 overlaps task 1 (which ends at byte %d)", second)},
		{1, second + 2, fmt.Sprintf("task 2: offset %d, but task 1 ends at byte %d", second+2, second)},
	} {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[4+4*c.task:], c.off)
		if _, err := parseMultipleChoice(b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("offset %d of task %d: %v (want %q)", c.off, c.task+1, err, c.want)
		}
	}
}

// A task too long for the context is refused from its bytes, before any
// model is loaded or any text tokenized: a 25 MB one-line HellaSwag context
// costs neither 25 seconds nor a GiB. One that fits by tokens is never
// refused by its bytes.
func TestLongTaskRefusedUntokenized(t *testing.T) {
	model := fixture.Asset(t, "models/stories260K.gguf")
	dir := t.TempDir()
	p := filepath.Join(dir, "long.txt")
	long := strings.Repeat("The cat sat on the mat. ", 1<<20) // 25 MB
	os.WriteFile(p, []byte(long+"\n0\na\nb\nc\nd\n"), 0o644)
	start := time.Now()
	_, err := EvaluateTasks(context.Background(), HellaSwag, p, 0, []string{model}, runner.Options{Ctx: 128})
	if err == nil || !strings.Contains(err.Error(), p+": task 1: ") || !strings.Contains(err.Error(), "more than the context of 128 tokens can hold") {
		t.Fatalf("%v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refused after %v", d)
	}
	// Just past the bound by bytes, but within the context by tokens: the
	// bound must not refuse it (it never does: see checkTaskBytes).
	longest, err := longestToken(model)
	if err != nil || longest == 0 {
		t.Fatalf("longest token %d, %v", longest, err)
	}
	ok := filepath.Join(dir, "ok.txt")
	os.WriteFile(ok, []byte("Once upon a time there was a cat.\n0\nIt sat.\nIt ran.\nIt ate.\nIt slept.\n"), 0o644)
	if _, err := EvaluateTasks(context.Background(), HellaSwag, ok, 0, []string{model}, runner.Options{Ctx: 64}); err != nil {
		t.Fatal(err)
	}
}

// The bound of checkTaskBytes holds for the tokenizers it trusts: a text
// takes at least (its bytes but ASCII white space) / (the longest token)
// tokens, whatever the text (words, runs of spaces, bytes the vocabulary
// lacks, long repeats).
func TestTokenBoundSound(t *testing.T) {
	for _, name := range []string{"stories260K.gguf", "story16-f16.gguf", "TinyStories-656K-Q8_0.gguf"} {
		model := fixture.Asset(t, "models/"+name)
		longest, err := longestToken(model)
		if err != nil || longest == 0 {
			t.Fatalf("%s: longest token %d, %v", name, longest, err)
		}
		lm, err := llamacpp.LoadModel(model, llamacpp.ModelParams{VocabOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		tried := 0
		// Every other text also has characters some vocabularies lack.
		pieces := []string{"the", " ", "    ", "\n", "once", "upon", "a", "time", "aaaaaaaa", "Lily", ".", "xq", "\t", "é", "漢字", "🙂", "----", ",", "\u00a0", "0123456789"}
		for i := 0; i < 300; i++ {
			var sb strings.Builder
			for j := rng.IntN(200); j >= 0; j-- {
				sb.WriteString(pieces[rng.IntN(len(pieces)-(i%2)*8)])
			}
			text := sb.String()
			toks, err := lm.Tokenize(text, false)
			if err != nil {
				continue // a character this vocabulary cannot represent
			}
			tried++
			if n := countNonSpace(text); len(toks)*longest < n {
				lm.Close()
				t.Fatalf("%s: %q: %d tokens for %d bytes besides white space, tokens of at most %d bytes", name, text, len(toks), n, longest)
			}
		}
		lm.Close()
		if tried < 100 {
			t.Fatalf("%s: only %d of 300 texts tokenized", name, tried)
		}
		t.Logf("%s: tokens of at most %d bytes, %d texts", name, longest, tried)
	}
}
