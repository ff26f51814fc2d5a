package prune

import (
	"github.com/ggufprune/ggufprune/gguf"
	"github.com/ggufprune/ggufprune/llamacpp"
	"github.com/ggufprune/ggufprune/llamacpp/arch"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// Model is an input model, opened once: its header is read and checked by
// Open, and every stage works from that reading.
type Model struct {
	Path   string
	GGUF   *gguf.Model
	Arch   string
	Blocks int // {arch}.block_count
	// MoE is the model's mixture-of-experts structure (nil: dense).
	MoE *arch.MoE

	fingerprint string
}

// Open reads a GGUF model's header (a split set from any shard's name) and
// checks it against the rules of llama.cpp (arch.Rules). No tensor data is
// read.
func Open(path string) (*Model, error) {
	g, err := gguf.OpenModel(path)
	if err != nil {
		return nil, err
	}
	m := &Model{Path: path, GGUF: g}
	if m.Arch, err = g.Architecture(); err == nil {
		if m.Blocks, err = g.BlockCount(); err == nil {
			if err = arch.CheckBlocks(g); err == nil {
				// The input passes the checks every file gets before
				// llama.cpp reads it: a file llama.cpp would abort on is
				// refused before any work, not carried into the output.
				err = arch.CheckModel(g, arch.Load)
			}
		}
	}
	if err != nil {
		g.Close()
		return nil, err
	}
	m.MoE = arch.MoEOf(g)
	return m, nil
}

// Close closes the model's files.
func (m *Model) Close() error { return m.GGUF.Close() }

// Size is the total size of the model's files.
func (m *Model) Size() int64 { return m.GGUF.Size() }

// MTPBlocks are the model's multi-token-prediction blocks (the last
// {arch}.nextn_predict_layers): a decode does not run them, so they have no
// score and are never removed.
func (m *Model) MTPBlocks() []int { return arch.MTPBlocks(m.GGUF, m.Blocks) }

// ScoredBlocks is the number of blocks a decode runs, and so scores: all
// but the multi-token-prediction blocks.
func (m *Model) ScoredBlocks() int { return m.Blocks - len(m.MTPBlocks()) }

// Fingerprint identifies the model's contents (see gguf.Model.Fingerprint),
// computed once.
func (m *Model) Fingerprint() (string, error) {
	if m.fingerprint == "" {
		fp, err := m.GGUF.Fingerprint()
		if err != nil {
			return "", err
		}
		m.fingerprint = fp
	}
	return m.fingerprint, nil
}

// load loads the model in llama.cpp from its open header.
func (m *Model) load(o runner.Options) (*llamacpp.Model, error) {
	return runner.Load(m.Path, m.GGUF, o)
}
