package eval

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	} {
		p := filepath.Join(dir, "bad")
		os.WriteFile(p, []byte(c.data), 0o644)
		_, err := EvaluateTasks(context.Background(), c.kind, p, 0, []string{model}, runner.Options{Ctx: 64})
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: %v (want %q)", c.kind, c.data[:min(20, len(c.data))], err, c.want)
		}
	}
}
