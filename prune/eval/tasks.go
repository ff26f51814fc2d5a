package eval

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/ggufprune/ggufprune/bi"
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/internal/inputfile"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Task accuracy as llama.cpp's llama-perplexity measures it (--hellaswag,
// --winogrande, --multiple-choice), in its file formats: each task offers
// sequences (a context with each ending), the model's score of a sequence is
// the mean log-probability of its scored tokens, and the task is right when
// the best-scored sequence is the right one.

// TaskKind names a benchmark format.
type TaskKind string

// The benchmark formats.
const (
	HellaSwag      TaskKind = "hellaswag"
	WinoGrande     TaskKind = "winogrande"
	MultipleChoice TaskKind = "multiple-choice"
)

// DefaultTasks is how many tasks llama-perplexity evaluates when not told:
// 400 for HellaSwag, all (0) for the others.
func DefaultTasks(k TaskKind) int {
	if k == HellaSwag {
		return 400
	}
	return 0
}

// task is one question: its candidates and which is right. Candidate i is
// head + mids[i] + tail, put together only when it is tokenized, so that a
// long context shared by many candidates is held once. For HellaSwag and
// multiple choice head is the context and a space, mids the endings and tail
// empty; for WinoGrande head and tail are the sentence before and after "_"
// and mids the options, and head + mids[i] is the prefix whose tokens are not
// scored when enough follows them.
type task struct {
	index      int // in the file, from 0
	head, tail string
	mids       []string
	gold       []bool
}

func (t *task) text(i int) string   { return t.head + t.mids[i] + t.tail }
func (t *task) prefix(i int) string { return t.head + t.mids[i] }

// TaskResult is a model's accuracy on a benchmark.
type TaskResult struct {
	Kind     TaskKind `json:"kind"`
	File     string   `json:"file"`
	Model    string   `json:"model"`
	Tasks    int      `json:"tasks"`
	Correct  int      `json:"correct"`
	Accuracy float64  `json:"accuracy"` // 0 to 1
	// StdErr is sqrt(p(1-p)/(n-1)) (what llama-perplexity prints for
	// WinoGrande and multiple choice); Low and High are the Wilson 95%
	// interval (what it prints for HellaSwag).
	StdErr    float64      `json:"stderr"`
	Low       float64      `json:"ci95_low"`
	High      float64      `json:"ci95_high"`
	PerTask   []TaskDetail `json:"-"`
	Chance    float64      `json:"chance"` // the accuracy of choosing at random
	FileTasks int          `json:"file_tasks"`
}

// TaskDetail is one task's scores.
type TaskDetail struct {
	Index  int       // in the file, from 0
	Scores []float64 // mean log-probability of each candidate's scored tokens
	Choice int       // the best-scored candidate
	Right  bool
}

// readTasks reads a benchmark file and picks n of its tasks (0: all) as
// llama-perplexity does: HellaSwag tasks are drawn in a random order
// (mt19937 seeded with 1, even when all are used); WinoGrande and multiple
// choice take all in file order, or n drawn at random.
func readTasks(kind TaskKind, path string, n int) ([]task, int, error) {
	// A task file is read whole, and its tasks hold its bytes about once
	// more (see task): bounded as a text read whole is, and read no further
	// than that bound should the file grow while it is read.
	b, err := inputfile.ReadAll(path, runner.MaxTextBytes)
	if err != nil {
		return nil, 0, err
	}
	var all []task
	switch kind {
	case HellaSwag, WinoGrande:
		// Text formats: refused as a text is when not UTF-8, naming where.
		// The multiple-choice parser checks each of its strings.
		if err := runner.CheckUTF8(b, 0); err != nil {
			return nil, 0, fmt.Errorf("%s: %s file: %w", path, kind, err)
		}
		if kind == HellaSwag {
			all, err = parseHellaSwag(b)
		} else {
			all, err = parseWinoGrande(b)
		}
	case MultipleChoice:
		all, err = parseMultipleChoice(b)
	default:
		return nil, 0, fmt.Errorf("unknown benchmark %q", kind)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %s file: %w", path, kind, err)
	}
	if len(all) == 0 {
		return nil, 0, fmt.Errorf("%s: no %s tasks", path, kind)
	}
	if n <= 0 || n > len(all) {
		n = len(all)
	}
	if kind == HellaSwag {
		return drawWithoutReplacement(all, n), len(all), nil
	}
	if n == len(all) {
		return all, len(all), nil
	}
	return drawSwapRemove(all, n), len(all), nil
}

// parseHellaSwag reads 6 lines per task: context, gold ending (0-3), four
// endings. One final line break is ignored.
func parseHellaSwag(b []byte) ([]task, error) {
	s := strings.TrimSuffix(string(b), "\n")
	lines := strings.Split(s, "\n")
	if len(lines)%6 != 0 {
		return nil, fmt.Errorf("%d lines, not a multiple of 6 (context, gold ending, 4 endings per task)", len(lines))
	}
	var ts []task
	for i := 0; i < len(lines); i += 6 {
		gold, err := strconv.Atoi(strings.TrimSpace(lines[i+1]))
		if err != nil || gold < 0 || gold > 3 {
			return nil, fmt.Errorf("task %d (line %d): gold ending %q is not 0, 1, 2 or 3", i/6+1, i+2, lines[i+1])
		}
		t := task{index: i / 6, head: lines[i] + " ", mids: lines[i+2 : i+6], gold: make([]bool, 4)}
		t.gold[gold] = true
		ts = append(ts, t)
	}
	return ts, nil
}

// parseWinoGrande reads the CSV index,sentence,option1,option2,answer, with
// "_" in the sentence where an option goes; only the first four commas
// outside double quotes separate fields, and a quoted sentence loses its
// quotes. A first line that is not a task (a header) is skipped.
func parseWinoGrande(b []byte) ([]task, error) {
	b = bytes.TrimPrefix(b, []byte{0xef, 0xbb, 0xbf}) // a byte order mark some CSV writers add
	var ts []task
	for ln, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		line = strings.TrimSuffix(line, "\r")
		var commas []int
		quoted := false
		for i := 0; i < len(line) && len(commas) < 4; i++ {
			switch {
			case line[i] == '"':
				quoted = !quoted
			case line[i] == ',' && !quoted:
				commas = append(commas, i)
			}
		}
		bad := func(what string) error { return fmt.Errorf("task on line %d: %s", ln+1, what) }
		if len(commas) != 4 {
			if ln == 0 {
				continue
			}
			return nil, bad("not index,sentence,option1,option2,answer")
		}
		sentence := line[commas[0]+1 : commas[1]]
		if len(sentence) >= 2 && sentence[0] == '"' {
			sentence = sentence[1 : len(sentence)-1]
		}
		answer, err := strconv.Atoi(strings.TrimSpace(line[commas[3]+1:]))
		if err != nil || answer < 1 || answer > 2 {
			if ln == 0 {
				continue // a header
			}
			return nil, bad(fmt.Sprintf("answer %q is not 1 or 2", line[commas[3]+1:]))
		}
		where := strings.IndexByte(sentence, '_')
		if where < 0 {
			return nil, bad("no _ in the sentence")
		}
		t := task{
			index: len(ts), head: sentence[:where], tail: sentence[where+1:],
			mids: []string{line[commas[1]+1 : commas[2]], line[commas[2]+1 : commas[3]]},
			gold: []bool{answer == 1, answer == 2},
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// parseMultipleChoice reads llama-perplexity's binary format: uint32 task
// count, uint32 offsets, then per task a question and two answer sets (each
// a uint32 count ≤ 100, the answers, then int32 labels), strings as uint32
// length and bytes. The first set (one answer labelled 1) is scored.
//
// llama-perplexity reads the tasks one after another when it takes them all,
// and at their offsets when it draws some: the two agree only when each
// offset is where its task follows the one before, so any other offset (past
// the end, -1 written as unsigned, into the header, overlapping the task
// before, or leaving a gap) is refused, naming the task.
func parseMultipleChoice(b []byte) ([]task, error) {
	r := &byteReader{b: b}
	n := r.u32()
	if r.err != nil || n == 0 {
		return nil, fmt.Errorf("no task count")
	}
	if uint64(n)*4 > uint64(len(b)) {
		return nil, fmt.Errorf("%d tasks cannot fit in %d bytes", n, len(b))
	}
	offs := make([]uint32, n) // n ≤ len(b)/4: no more than the file
	for i := range offs {
		offs[i] = r.u32()
	}
	if r.err != nil {
		return nil, fmt.Errorf("%d task offsets cannot fit in %d bytes", n, len(b))
	}
	var ts []task
	for i := 0; i < int(n); i++ {
		at := r.off
		if err := checkOffset(i, offs[i], at, 4+4*int(n), len(b)); err != nil {
			return nil, err
		}
		q := r.text()
		var sets [2]struct {
			answers []string
			labels  []int32
		}
		for s := range sets {
			k := r.u32()
			if r.err == nil && k > 100 {
				return nil, fmt.Errorf("task %d (byte %d): %d answers, more than 100", i+1, at, k)
			}
			for j := 0; j < int(k) && r.err == nil; j++ {
				sets[s].answers = append(sets[s].answers, r.text())
			}
			for j := 0; j < int(k) && r.err == nil; j++ {
				sets[s].labels = append(sets[s].labels, int32(r.u32()))
			}
		}
		if r.err != nil {
			return nil, fmt.Errorf("task %d (byte %d): %w", i+1, at, r.err)
		}
		if q == "" || len(sets[0].answers) == 0 {
			return nil, fmt.Errorf("task %d (byte %d): an empty question or no answers", i+1, at)
		}
		t := task{index: i, head: q + " ", mids: sets[0].answers}
		for j, a := range sets[0].answers {
			if a == "" {
				return nil, fmt.Errorf("task %d (byte %d): answer %d is empty", i+1, at, j+1)
			}
			t.gold = append(t.gold, sets[0].labels[j] == 1)
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// checkOffset checks task i's offset in the file's table against where the
// task is: at, right after the task before (the first task right after the
// table, which ends at first); size is the file's.
func checkOffset(i int, off uint32, at, first, size int) error {
	signed := ""
	if int32(off) < 0 {
		signed = fmt.Sprintf(" (%d as a signed number)", int32(off))
	}
	switch {
	case int64(off) == int64(at):
		return nil
	case int64(off) >= int64(size):
		return fmt.Errorf("task %d: offset %d%s is past the end of the file (%d bytes)", i+1, off, signed, size)
	case int(off) < first:
		return fmt.Errorf("task %d: offset %d is inside the task count and offsets (the first task starts at byte %d)", i+1, off, first)
	case i > 0 && int(off) < at:
		return fmt.Errorf("task %d: offset %d overlaps task %d (which ends at byte %d)", i+1, off, i, at)
	case i == 0:
		return fmt.Errorf("task 1: offset %d, but the first task starts at byte %d, right after the offsets", off, at)
	}
	return fmt.Errorf("task %d: offset %d, but task %d ends at byte %d: tasks must follow one another", i+1, off, i, at)
}

type byteReader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("truncated")

func (r *byteReader) u32() uint32 {
	if r.err != nil || r.off+4 > len(r.b) {
		r.err = cmp.Or(r.err, errTruncated)
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

// text reads a string, which must be UTF-8 (the error names the offset of
// the first byte that is not, in the file).
func (r *byteReader) text() string {
	n := int(r.u32())
	if r.err != nil || n > len(r.b)-r.off {
		r.err = cmp.Or(r.err, errTruncated)
		return ""
	}
	if err := runner.CheckUTF8(r.b[r.off:r.off+n], r.off); err != nil {
		r.err = err
		return ""
	}
	s := string(r.b[r.off : r.off+n])
	r.off += n
	return s
}

// drawWithoutReplacement draws n tasks as llama-perplexity draws HellaSwag
// tasks: each a uniform pick (libstdc++'s uniform_int_distribution over
// mt19937 seeded with 1) among those left, in file order.
func drawWithoutReplacement(all []task, n int) []task {
	left := append([]task(nil), all...)
	mt := newMT19937(1)
	out := make([]task, 0, n)
	for len(out) < n {
		r := uint32(len(left))
		prod := uint64(mt.next()) * uint64(r)
		if uint32(prod) < r {
			th := -r % r
			for uint32(prod) < th {
				prod = uint64(mt.next()) * uint64(r)
			}
		}
		k := int(prod >> 32)
		out = append(out, left[k])
		left = append(left[:k], left[k+1:]...)
	}
	return out
}

// drawSwapRemove draws n tasks as llama-perplexity draws WinoGrande and
// multiple-choice tasks: j = ⌊2⁻³² · mt19937() · left⌋ in float32, then
// the last index left takes j's place.
func drawSwapRemove(all []task, n int) []task {
	aux := make([]int, len(all))
	for i := range aux {
		aux[i] = i
	}
	mt := newMT19937(1)
	const scale = float32(1.0 / 4294967296.0)
	out := make([]task, 0, n)
	for len(out) < n {
		j := int(float32(scale*float32(mt.next())) * float32(len(aux)))
		j = min(j, len(aux)-1)
		out = append(out, all[aux[j]])
		aux[j] = aux[len(aux)-1]
		aux = aux[:len(aux)-1]
	}
	return out
}

// mt19937 is the 32-bit Mersenne Twister of C++'s std::mt19937.
type mt19937 struct {
	s [624]uint32
	i int
}

func newMT19937(seed uint32) *mt19937 {
	m := &mt19937{i: 624}
	m.s[0] = seed
	for i := 1; i < 624; i++ {
		m.s[i] = 1812433253*(m.s[i-1]^(m.s[i-1]>>30)) + uint32(i)
	}
	return m
}

func (m *mt19937) next() uint32 {
	if m.i >= 624 {
		for i := 0; i < 624; i++ {
			y := m.s[i]&0x80000000 | m.s[(i+1)%624]&0x7fffffff
			v := m.s[(i+397)%624] ^ y>>1
			if y&1 != 0 {
				v ^= 0x9908b0df
			}
			m.s[i] = v
		}
		m.i = 0
	}
	y := m.s[m.i]
	m.i++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}

// EvaluateTasks runs every model on the benchmark's tasks. n is how many
// tasks (0: all; DefaultTasks gives llama-perplexity's default).
func EvaluateTasks(ctx context.Context, kind TaskKind, path string, n int, models []string, o runner.Options) ([]TaskResult, error) {
	tasks, inFile, err := readTasks(kind, path, n)
	if err != nil {
		return nil, err
	}
	// Tasks too long for the context are refused before any model is
	// loaded or any text tokenized, where their bytes alone tell.
	for _, m := range models {
		if err := checkTaskBytes(path, tasks, m, o.CtxSize()); err != nil {
			return nil, err
		}
	}
	var out []TaskResult
	for _, m := range models {
		r, err := evaluateTasks(ctx, kind, path, tasks, m, o)
		if err != nil {
			return nil, err
		}
		r.FileTasks = inFile
		out = append(out, r)
	}
	return out, nil
}

func evaluateTasks(ctx context.Context, kind TaskKind, path string, tasks []task, model string, o runner.Options) (TaskResult, error) {
	lm, err := runner.Load(model, nil, o)
	if err != nil {
		return TaskResult{}, err
	}
	defer lm.Close()
	lctx, err := runner.NewContext(lm, runner.Options{Ctx: o.Ctx, Threads: o.Threads}, runner.Plain)
	if err != nil {
		return TaskResult{}, err
	}
	defer lctx.Close()
	res := TaskResult{Kind: kind, File: path, Model: model, Tasks: len(tasks)}
	logits := make([]float32, lm.Info().NVocab)
	var answers int
	progress := o.ProgressFunc(string(kind), "tasks", 0)
	for ti, t := range tasks {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		seqs := make([][]int32, len(t.mids))
		for i := range t.mids {
			if seqs[i], err = lm.Tokenize(t.text(i), true); err != nil {
				return res, fmt.Errorf("%s: task %d: %w", path, t.index+1, err)
			}
			if len(seqs[i]) > o.CtxSize() {
				return res, fmt.Errorf("%s: task %d: %d tokens, longer than the context of %d (give a larger -c)", path, t.index+1, len(seqs[i]), o.CtxSize())
			}
		}
		cp := commonPrefix(seqs)
		d := TaskDetail{Index: t.index, Scores: make([]float64, len(seqs))}
		// The scored positions of each candidate: the tokens after the
		// common prefix (for WinoGrande, after the option when more than
		// 3 tokens follow the prefix in both, and without the last token
		// when more than one remains).
		from := make([]int, len(seqs))
		to := make([]int, len(seqs))
		for s := range seqs {
			from[s], to[s] = cp, len(seqs[s])
		}
		if kind == WinoGrande {
			skip := len(seqs[0])-cp > 3 && len(seqs[1])-cp > 3
			for s := range seqs {
				if skip {
					base, err := lm.Tokenize(t.prefix(s), true)
					if err != nil {
						return res, fmt.Errorf("%s: task %d: %w", path, t.index+1, err)
					}
					from[s] = len(base)
				}
				if to[s]-from[s] > 1 {
					to[s]--
				}
			}
		}
		for s, seq := range seqs {
			if from[s] < 1 || from[s] >= to[s] {
				return res, fmt.Errorf("%s: task %d: candidate %d has no tokens after what all candidates share", path, t.index+1, s+1)
			}
			if err := runner.DecodeFrom(lctx, seq, from[s]-1); err != nil {
				return res, err
			}
			var sum float64
			for p := from[s]; p < to[s]; p++ {
				if err := lctx.LogitsInto(p-1, logits); err != nil {
					return res, err
				}
				sum += bi.LogProb(logits, int(seq[p]))
			}
			d.Scores[s] = sum / float64(to[s]-from[s])
		}
		for s := range d.Scores {
			// The first best on ties; WinoGrande's tie goes to option 2.
			if d.Scores[s] > d.Scores[d.Choice] || (kind == WinoGrande && d.Scores[s] == d.Scores[d.Choice]) {
				d.Choice = s
			}
		}
		d.Right = t.gold[d.Choice]
		if d.Right {
			res.Correct++
		}
		answers += len(seqs)
		res.PerTask = append(res.PerTask, d)
		if progress != nil {
			progress(ti+1, len(tasks))
		}
	}
	n := float64(len(tasks))
	p := float64(res.Correct) / n
	res.Accuracy = p
	if n > 1 {
		res.StdErr = math.Sqrt(p * (1 - p) / (n - 1))
	}
	res.Low, res.High = wilson(p, n)
	res.Chance = n / float64(answers)
	return res, nil
}

// checkTaskBytes refuses, without tokenizing them, the tasks with a candidate
// that cannot fit in ctx tokens of the model's tokenizer, telling so from
// its bytes alone when they are enough; the rest are checked once tokenized.
//
// The bound holds for the tokenizers that drop no byte of the text: llama's
// (SPM), gpt2's (byte-level BPE) and rwkv's. Each token of such a tokenizer
// stands for a run of the text's bytes no longer than the token's own text in
// the vocabulary (SPM writes a space as the 3 bytes of "▁", BPE a byte as 1
// or 2 bytes, a byte-fallback token "<0x41>" stands for 1 byte, rwkv's
// escapes only lengthen), so a text of b bytes takes at least b / L tokens,
// L the longest token text of the vocabulary. Only ASCII white space is ever
// dropped, by tokens that strip it beside them (llama.cpp's LSTRIP and
// RSTRIP attributes), so only the other bytes are counted: a candidate with
// more than ctx × L of them has more than ctx tokens, and the check never
// refuses a task that would fit. The BOS, EOS and space prefix a tokenizer
// adds only lengthen the tokens further. Other tokenizers (bert's, t5's,
// plamo2's) normalize the text and may fold any run of it into one token:
// their tasks are tokenized first, as before.
func checkTaskBytes(path string, tasks []task, model string, ctx int) error {
	longest, err := longestToken(model)
	if err != nil || longest == 0 {
		return err
	}
	limit := int64(ctx) * int64(longest)
	for _, t := range tasks {
		shared := int64(countNonSpace(t.head) + countNonSpace(t.tail))
		if shared > limit {
			return fmt.Errorf("%s: task %d: %d bytes of text besides white space, more than the context of %d tokens can hold (%s's tokens are at most %d bytes; give a larger -c)", path, t.index+1, shared, ctx, model, longest)
		}
		for i, m := range t.mids {
			if b := shared + int64(countNonSpace(m)); b > limit {
				return fmt.Errorf("%s: task %d: candidate %d has %d bytes of text besides white space, more than the context of %d tokens can hold (%s's tokens are at most %d bytes; give a larger -c)", path, t.index+1, i+1, b, ctx, model, longest)
			}
		}
	}
	return nil
}

// longestToken is the length in bytes of the longest token text of the
// model's vocabulary when its tokenizer drops no byte but ASCII white space
// (see checkTaskBytes), else 0. A model whose header cannot be read gives
// the error that loading it would.
func longestToken(model string) (int, error) {
	m, err := gguf.OpenModel(model)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	v, _ := m.Get("tokenizer.ggml.model")
	switch name, _ := v.Str(); name {
	case "llama", "gpt2", "rwkv":
	default:
		return 0, nil
	}
	v, _ = m.Get("tokenizer.ggml.tokens")
	a, ok := v.Array()
	if !ok || a.Elem() != gguf.TypeString {
		return 0, nil // refused by the tokenizer rules when the model loads
	}
	longest := 0
	for i := 0; i < a.Len(); i++ {
		s, _ := a.Index(i).Str()
		longest = max(longest, len(s))
	}
	return longest, nil
}

// countNonSpace counts the bytes of s other than ASCII white space (C's
// isspace: what llama.cpp's strip attributes remove).
func countNonSpace(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ', '\t', '\n', '\v', '\f', '\r':
		default:
			n++
		}
	}
	return n
}

// wilson is the Wilson score 95% interval of a proportion p of n, as
// llama-perplexity prints for HellaSwag.
func wilson(p, n float64) (lo, hi float64) {
	const za = 1.95996398454
	z := za * za / n
	cnf := z * math.Sqrt(n*(4*p*(1-p)+z)) / (2 * za)
	return (p + z/2 - cnf) / (1 + z), (p + z/2 + cnf) / (1 + z)
}

// commonPrefix is how many leading tokens all sequences share.
func commonPrefix(seqs [][]int32) int {
	n := 0
	for ; ; n++ {
		for _, s := range seqs {
			if n >= len(s) || s[n] != seqs[0][n] {
				return n
			}
		}
	}
}
