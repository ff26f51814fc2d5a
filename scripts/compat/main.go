// Command compat checks that the files ggufprune writes load and compute the
// same in the newest llama.cpp, as node-llama-cpp ships it prebuilt
// (docs/testing.md, "Newest llama.cpp"). It writes pruned files of the
// shipped models and of every generated architecture into a temporary
// folder, evaluates one fixed token sequence with each file in the llama.cpp
// that ggufprune links and in node-llama-cpp's (logits.mjs beside this file,
// one Node process per file so that an abort names its file), and compares
// the logits. It prints a Markdown table and writes compat.json.
//
//	go run ./scripts/compat [-o bin/compat] [-keep] [-only REGEXP] [-node node]
//
// node_modules must be installed first (make compat does: npm install in
// scripts/compat). -only REGEXP checks only the files so named,
// -flash-attention overrides node-llama-cpp's setting (default: what the
// linked llama.cpp chose for the file).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ggufprune/ggufprune/gguf/surgery"
	"github.com/ggufprune/ggufprune/internal/fixture"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// text is the sequence every file evaluates (after its BOS).
const text = "Once upon a time, there was a little girl who liked to play in the park with her dog."

// File is one file checked.
type File struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	How    string `json:"how"`                   // how it was made: "original", or the removal
	Writes string `json:"write_error,omitempty"` // ggufprune refused or failed to write it
	path   string
	text   []int32 // the text as the linked llama.cpp tokenizes it (no BOS)
	// Reference, when set, is what the newest's logits are compared with
	// instead of the linked llama.cpp's on the same file: the linked
	// llama.cpp running the original (skipFrom) with blocks skipped at run
	// time, which is what removing them computes when every kept block keeps
	// its kind (forced removals that write the kinds).
	Reference string `json:"reference,omitempty"`
	skipFrom  string
	skip      []int

	Tokens []int32 `json:"tokens,omitempty"`
	// The llama.cpp ggufprune links.
	PinnedLoads bool   `json:"pinned_loads"`
	PinnedError string `json:"pinned_error,omitempty"`
	// node-llama-cpp's.
	NewestLoads bool     `json:"newest_loads"`
	NewestError string   `json:"newest_error,omitempty"`
	NewestLog   []string `json:"newest_log,omitempty"`
	// Flash attention in each ("on", "off"; "" unknown). The linked
	// llama.cpp resolves its default, auto, per context; node-llama-cpp is
	// given the same (-flash-attention match).
	PinnedFlashAttention string `json:"pinned_flash_attention,omitempty"`
	NewestFlashAttention string `json:"newest_flash_attention,omitempty"`
	// The text tokenized by each (without BOS), where they differ.
	TokenizedSame *bool `json:"tokenized_same,omitempty"`
	// Logits of the newest against the pinned, over every position.
	MaxAbsDiff float64 `json:"max_abs_diff"`
	// The largest over positions of max_j |d_j| / max_j |pinned_j|.
	MaxRelDiff float64 `json:"max_rel_diff"`
	// Positions whose top token is the same, of all.
	SameArgmax int  `json:"same_argmax"`
	Positions  int  `json:"positions"`
	Compared   bool `json:"compared"`
}

// newest is one line of logits.mjs's output.
type newest struct {
	Model      string   `json:"model"`
	Loaded     bool     `json:"loaded"`
	Error      *string  `json:"error"`
	Log        []string `json:"log"`
	LlamaCpp   string   `json:"llama_cpp"`
	BuildType  string   `json:"build_type"`
	NVocab     int      `json:"n_vocab"`
	Tokens     []int32  `json:"tokens"`
	Tokenized  []int32  `json:"tokenized"`
	LogitsFile string   `json:"logits_file"`
	raw        []byte   // the logits file's bytes
}

// Report is compat.json.
type Report struct {
	Date         string `json:"date"`
	NodeLlamaCpp string `json:"node_llama_cpp"`
	LlamaCpp     string `json:"llama_cpp"`
	Binaries     string `json:"binaries"`
	Pinned       string `json:"pinned_llama_cpp"`
	Text         string `json:"text"`
	Files        []File `json:"files"`
}

func main() {
	out := flag.String("o", "bin/compat", "folder for compat.json (and the files, with -keep)")
	keep := flag.Bool("keep", false, "keep the written GGUF files in the output folder")
	nodeBin := flag.String("node", "node", "Node.js")
	only := flag.String("only", "", "check only the files whose name matches this regular expression")
	fa := flag.String("flash-attention", "match", "node-llama-cpp's flash attention: match (what the linked llama.cpp chose for the file), auto, true or false")
	flag.Parse()
	log.SetFlags(0)
	root := fixture.Root()
	script := filepath.Join(root, "scripts", "compat", "logits.mjs")
	if _, err := os.Stat(filepath.Join(root, "scripts", "compat", "node_modules", "node-llama-cpp")); err != nil {
		log.Fatalf("node-llama-cpp is not installed: run npm install in scripts/compat (make compat does)")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ggufprune-compat-")
	if err != nil {
		log.Fatal(err)
	}
	if *keep {
		dir = filepath.Join(*out, "files")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			log.Fatal(err)
		}
	} else {
		defer os.RemoveAll(dir)
	}
	re, err := regexp.Compile(*only)
	if err != nil {
		log.Fatal(err)
	}
	files := write(root, dir, re)
	rep := Report{
		Date:   time.Now().UTC().Format("2006-01-02"),
		Pinned: "ollama v0.17.4 (llama.cpp ec98e2002)",
		Text:   text,
	}
	rep.NodeLlamaCpp = npmVersion(filepath.Join(root, "scripts", "compat", "node_modules", "node-llama-cpp", "package.json"))
	for i := range files {
		f := &files[i]
		if f.Writes != "" {
			rep.Files = append(rep.Files, *f)
			continue
		}
		ref := pinned(f)
		n := runNode(*nodeBin, script, dir, *fa, f)
		if n != nil {
			rep.LlamaCpp, rep.Binaries = n.LlamaCpp, n.BuildType
		}
		if ref != nil && n != nil && n.Loaded && n.LogitsFile != "" {
			compare(f, ref, n)
		}
		rep.Files = append(rep.Files, *f)
		fmt.Fprintf(os.Stderr, "%-40s pinned %-5v newest %-5v rel %.3g\n", f.Name, f.PinnedLoads, f.NewestLoads, f.MaxRelDiff)
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "compat.json"), append(js, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	table(os.Stdout, rep)
}

// write writes the files to check into dir: the shipped models and their
// pruned copies, and every generated architecture with its planted identity
// blocks removed.
func write(root, dir string, only *regexp.Regexp) []File {
	ctx := context.Background()
	models := filepath.Join(root, "testdata", "models")
	shared := filepath.Join(root, "..", "shared", "models")
	cal, err := runner.CalibrationFile(filepath.Join(root, "testdata", "text", "tinystories", "tinystories_val_first100.txt"))
	if err != nil {
		log.Fatal(err)
	}
	q8, ok := llamacpp.LookupQuantType("Q8_0")
	if !ok {
		log.Fatal("no Q8_0")
	}
	var files []File
	add := func(name, how, path string, err error) {
		if !only.MatchString(name) {
			return
		}
		f := File{Name: name, How: how, Path: filepath.Base(path), path: path}
		if err != nil {
			f.Writes = err.Error()
		}
		files = append(files, f)
	}
	// pruned writes src as o says into dir/name.gguf.
	pruned := func(src, name, how string, o prune.Options) {
		if !only.MatchString(name) {
			return
		}
		dst := filepath.Join(dir, name+".gguf")
		m, err := prune.Open(src)
		if err == nil {
			o.Write.Output = dst
			o.Write.Overwrite = true
			_, err = prune.Run(ctx, m, o)
			if errors.Is(err, arch.ErrIndexPattern) {
				// Whole runs of an index pattern, as the tests force them.
				o.Write.Plan.Force = true
				_, err = prune.Run(ctx, m, o)
			}
			m.Close()
		}
		add(name, how, dst, err)
	}
	run := runner.Options{Ctx: 128, Chunks: 8, Threads: 1}

	story16 := filepath.Join(models, "story16-f16.gguf")
	add("story16-f16", "original", story16, nil)
	pruned(story16, "story16-f16-L3,5-7", "--layers 3,5-7", prune.Options{Layers: []int{3, 5, 6, 7}})
	pruned(story16, "story16-f16-L3,5-7-heal", "--layers 3,5-7 --heal", prune.Options{Layers: []int{3, 5, 6, 7}, Heal: true, Calibration: cal, Run: run})
	pruned(story16, "story16-f16-L3,5-7-Q8_0", "--layers 3,5-7 --quantize Q8_0", prune.Options{Layers: []int{3, 5, 6, 7}, Write: prune.WriteOptions{Quantize: q8, QuantizeThreads: 1}})
	if f32 := filepath.Join(shared, "story16-f32.gguf"); exists(f32) {
		add("story16-f32", "original", f32, nil)
		pruned(f32, "story16-f32-L3,5-7", "--layers 3,5-7", prune.Options{Layers: []int{3, 5, 6, 7}})
	}
	moe := filepath.Join(models, "moe8-f16.gguf")
	add("moe8-f16", "original", moe, nil)
	gone, err := prune.ParseExpertList("0-7:1,6")
	if err != nil {
		log.Fatal(err)
	}
	pruned(moe, "moe8-f16-E0-7:1,6", "--expert-list 0-7:1,6", prune.Options{Write: prune.WriteOptions{Plan: surgery.Options{Experts: gone}}})
	pruned(moe, "moe8-f16-L2", "--layers 2", prune.Options{Layers: []int{2}})
	s260 := filepath.Join(models, "stories260K.gguf")
	add("stories260K", "original", s260, nil)
	pruned(s260, "stories260K-L2", "--layers 2", prune.Options{Layers: []int{2}})
	s656 := filepath.Join(models, "TinyStories-656K-Q8_0.gguf")
	add("TinyStories-656K-Q8_0", "original", s656, nil)
	pruned(s656, "TinyStories-656K-Q8_0-L1", "--layers 1", prune.Options{Layers: []int{1}})

	// The generated architectures, shaped as prune/arch_test.go shapes them,
	// with their planted identity blocks removed: the pruned file computes
	// the original's logits.
	for _, a := range fixture.Architectures() {
		s := archSpec(a)
		src := filepath.Join(dir, a+".gguf")
		err := fixture.RandomModel(src, s260, s)
		add(a, fmt.Sprintf("generated, %d blocks", s.Blocks), src, err)
		if err != nil {
			continue
		}
		how := "--layers " + list(s.Identity) + " (identity blocks)"
		pruned(src, a+"-L"+list(s.Identity), how, prune.Options{Layers: s.Identity})
		// A forced removal that changes the kind of kept blocks, where the
		// file then carries the kept blocks' kinds for the newer llama.cpp
		// (arch.SWAKinds): it must compute the original without block 1.
		if m, err := prune.Open(src); err == nil {
			kinds := arch.SWAKinds(m.GGUF)
			m.Close()
			if kinds != nil {
				name := a + "-L1-forced"
				pruned(src, name, "--layers 1 --force (kinds in sliding_window_pattern)", prune.Options{Layers: []int{1}, Write: prune.WriteOptions{Plan: surgery.Options{Force: true}}})
				if n := len(files); n > 0 && files[n-1].Name == name {
					files[n-1].Reference = "the linked llama.cpp running the original with block 1 skipped"
					files[n-1].skipFrom, files[n-1].skip = src, []int{1}
				}
			}
		}
	}
	return files
}

// archSpec is the generated model of prune/arch_test.go for an architecture:
// 6 blocks with identity blocks 2 and 3, but where an index pattern needs a
// longer model and a removal of whole periods.
func archSpec(a string) fixture.ModelSpec {
	s := fixture.ModelSpec{Arch: a, Blocks: 6, Embd: 64, FF: 128, Heads: 4, KVHeads: 2, Ctx: 256, Identity: []int{2, 3}}
	switch a {
	case "cohere2", "exaone4":
		s.Blocks, s.Identity = 10, []int{1, 2, 3, 4}
	case "gemma3":
		s.Blocks, s.Identity = 12, []int{1, 2, 3, 4, 5, 6}
	case "smollm3":
		s.Blocks, s.Identity = 8, []int{2, 3, 4, 5}
	case "llama4", "qwen3next":
		s.Blocks, s.Identity = 8, []int{1, 2, 3, 4}
	case "gemma3n":
		s.Blocks, s.Identity, s.FF = 10, []int{1, 2, 3, 4, 5}, 512
	}
	return s
}

func list(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// pinned loads f in the llama.cpp ggufprune links, records the tokens
// (BOS and the text) and returns their logits.
func pinned(f *File) [][]float32 {
	path := f.path
	if f.skipFrom != "" {
		// The file itself must load in the linked llama.cpp too.
		lm, err := llamacpp.LoadModel(f.path, llamacpp.ModelParams{})
		if err != nil {
			f.PinnedError = err.Error()
			return nil
		}
		lm.Close()
		path = f.skipFrom
	}
	lm, err := llamacpp.LoadModel(path, llamacpp.ModelParams{})
	if err != nil {
		f.PinnedError = err.Error()
		return nil
	}
	defer lm.Close()
	f.PinnedLoads = true
	toks, err := lm.Tokenize(text, false)
	if err != nil {
		f.PinnedError = err.Error()
		return nil
	}
	f.text = toks
	info := lm.Info()
	if info.BOS >= 0 {
		toks = append([]int32{info.BOS}, toks...)
	}
	f.Tokens = toks
	n := 64
	if info.NCtxTrain > 0 {
		n = min(n, info.NCtxTrain)
	}
	// The context's log says whether flash attention (auto) is on.
	var logBuf bytes.Buffer
	llamacpp.Log.SetOutput(&logBuf)
	c, err := lm.NewContext(llamacpp.ContextParams{NCtx: n, Threads: 1, Capture: f.skip != nil})
	llamacpp.Log.SetOutput(nil)
	if err == nil && f.skip != nil {
		err = c.SetSkip(f.skip)
	}
	switch {
	case strings.Contains(logBuf.String(), "Flash Attention was auto, set to enabled"):
		f.PinnedFlashAttention = "on"
	case strings.Contains(logBuf.String(), "Flash Attention was auto, set to disabled"):
		f.PinnedFlashAttention = "off"
	}
	if err != nil {
		f.PinnedError = err.Error()
		return nil
	}
	defer c.Close()
	if err := c.Decode(toks, 0, 0); err != nil {
		f.PinnedError = err.Error()
		return nil
	}
	out := make([][]float32, len(toks))
	for i := range toks {
		if out[i], err = c.Logits(i); err != nil {
			f.PinnedError = err.Error()
			return nil
		}
	}
	return out
}

// runNode runs logits.mjs on f alone, with f's tokens when the pinned
// llama.cpp gave some (else the text, as the newest tokenizes it).
func runNode(node, script, dir, fa string, f *File) *newest {
	od, err := os.MkdirTemp(dir, "logits-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(od)
	tf := filepath.Join(od, "text.txt")
	if err := os.WriteFile(tf, []byte(text), 0o644); err != nil {
		log.Fatal(err)
	}
	if fa == "match" {
		fa = map[string]string{"on": "true", "off": "false", "": "auto"}[f.PinnedFlashAttention]
	}
	args := []string{script, "--text-file", tf, "--out", od, "--threads", "1", "--ctx", "64", "--flash-attention", fa}
	if f.Tokens != nil {
		s := make([]string, len(f.Tokens))
		for i, t := range f.Tokens {
			s[i] = strconv.Itoa(int(t))
		}
		args = append(args, "--tokens", strings.Join(s, ","))
	}
	args = append(args, f.path)
	cmd := exec.Command(node, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var n newest
	line, _, _ := bytes.Cut(stdout.Bytes(), []byte("\n"))
	if err := json.Unmarshal(line, &n); err != nil {
		// No result: node-llama-cpp's llama.cpp aborted the process.
		f.NewestError = fmt.Sprintf("node exited (%v): %s", runErr, tail(stderr.String(), 800))
		return nil
	}
	f.NewestLoads = n.Loaded
	f.NewestLog = n.Log
	if n.Loaded {
		f.NewestFlashAttention = map[string]string{"true": "on", "false": "off"}[fa]
	}
	for _, l := range n.Log {
		switch {
		case strings.Contains(l, "Flash Attention enabled"):
			f.NewestFlashAttention = "on"
		case strings.Contains(l, "Flash Attention not supported"):
			f.NewestFlashAttention = "off"
		}
	}
	if n.Error != nil {
		f.NewestError = *n.Error
		if msgs := errorLines(n.Log); msgs != "" {
			f.NewestError += " (" + msgs + ")"
		}
	}
	if f.text != nil && n.Tokenized != nil {
		same := slices.Equal(f.text, n.Tokenized)
		f.TokenizedSame = &same
	}
	if n.LogitsFile != "" {
		if n.raw, err = os.ReadFile(n.LogitsFile); err != nil {
			log.Fatal(err)
		}
	}
	return &n
}

// errorLines are llama.cpp's error lines in a log, joined.
func errorLines(lines []string) string {
	var errs []string
	for _, l := range lines {
		e, ok := strings.CutPrefix(l, "error:")
		if e = strings.TrimSpace(e); ok && !slices.Contains(errs, e) {
			errs = append(errs, e)
		}
	}
	return strings.Join(errs, "; ")
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// compare fills f's differences between the pinned logits and the newest's.
func compare(f *File, ref [][]float32, n *newest) {
	raw := n.raw
	nv := n.NVocab
	if nv == 0 || len(ref) == 0 || nv != len(ref[0]) || len(raw) != 4*nv*len(ref) {
		f.NewestError = fmt.Sprintf("logits of another shape: %d bytes for %d positions of %d (pinned %d)", len(raw), len(ref), nv, len(ref[0]))
		return
	}
	f.Compared = true
	f.Positions = len(ref)
	for i, r := range ref {
		var d, s float64
		x := make([]float32, nv)
		for j := range x {
			x[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*(i*nv+j):]))
			dj := math.Abs(float64(x[j] - r[j]))
			if math.IsNaN(dj) {
				dj = math.Inf(1)
			}
			d = math.Max(d, dj)
			s = math.Max(s, math.Abs(float64(r[j])))
		}
		f.MaxAbsDiff = math.Max(f.MaxAbsDiff, d)
		f.MaxRelDiff = math.Max(f.MaxRelDiff, d/s)
		if argmax(x) == argmax(r) {
			f.SameArgmax++
		}
	}
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func npmVersion(pkg string) string {
	raw, err := os.ReadFile(pkg)
	if err != nil {
		return "?"
	}
	var p struct {
		Version string `json:"version"`
	}
	json.Unmarshal(raw, &p)
	return p.Version
}

// table prints the report as Markdown.
func table(w *os.File, rep Report) {
	fmt.Fprintf(w, "node-llama-cpp %s (llama.cpp %s, %s binaries, CPU) against the linked llama.cpp (%s), %s; text %q\n\n",
		rep.NodeLlamaCpp, rep.LlamaCpp, rep.Binaries, rep.Pinned, rep.Date, rep.Text)
	fmt.Fprintln(w, "| file | made by | loads (linked) | loads (newest) | flash attention | max abs diff | max rel diff | same argmax |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	yes := func(ok bool, e string) string {
		if ok && e == "" {
			return "yes"
		}
		if ok {
			return "yes; " + cell(e)
		}
		return "**no**: " + cell(e)
	}
	for _, f := range rep.Files {
		if f.Writes != "" {
			fmt.Fprintf(w, "| %s | %s | not written: %s | | | | | |\n", f.Name, f.How, cell(f.Writes))
			continue
		}
		abs, rel, top := "—", "—", "—"
		if f.Compared {
			abs, rel = fmt.Sprintf("%.3g", f.MaxAbsDiff), fmt.Sprintf("%.3g", f.MaxRelDiff)
			top = fmt.Sprintf("%d/%d", f.SameArgmax, f.Positions)
		}
		if f.TokenizedSame != nil && !*f.TokenizedSame {
			top += " (tokenizes the text differently)"
		}
		fa := f.PinnedFlashAttention
		if f.NewestLoads && f.NewestFlashAttention != f.PinnedFlashAttention {
			fa = fmt.Sprintf("linked %s, newest %s", or(f.PinnedFlashAttention, "?"), or(f.NewestFlashAttention, "?"))
		}
		how := f.How
		if f.Reference != "" {
			how += "; compared with " + f.Reference
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", f.Name, how, yes(f.PinnedLoads, f.PinnedError), yes(f.NewestLoads, f.NewestError), fa, abs, rel, top)
	}
}

func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(tail(s, 300))
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
