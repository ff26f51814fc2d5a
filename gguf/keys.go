package gguf

import "fmt"

// Metadata keys, as gguf-py's Keys names them. General keys are written
// whole; architecture keys are written under the architecture's prefix,
// {arch}.KEY, and read through ArchKV.
const (
	KeyArchitecture = "general.architecture"
	KeyAlignment    = "general.alignment"
	KeyType         = "general.type"
	KeyFileType     = "general.file_type"
	KeyName         = "general.name"

	KeyBlockCount             = "block_count"
	KeyContextLength          = "context_length"
	KeyEmbeddingLength        = "embedding_length"
	KeyFeedForwardLength      = "feed_forward_length"
	KeyHeadCount              = "attention.head_count"
	KeyHeadCountKV            = "attention.head_count_kv"
	KeyKeyLength              = "attention.key_length"
	KeyValueLength            = "attention.value_length"
	KeySlidingWindow          = "attention.sliding_window"
	KeyExpertCount            = "expert_count"
	KeyExpertUsedCount        = "expert_used_count"
	KeyExpertFeedForward      = "expert_feed_forward_length"
	KeyLeadingDenseBlockCount = "leading_dense_block_count"
	KeyNextNPredictLayers     = "nextn_predict_layers"
)

// Getter is anything that holds metadata: a File, a Model, or Metadata.
type Getter interface {
	Get(key string) (Value, bool)
}

// Metadata is a list of key-value pairs, as a file holds them, with lookup
// by key.
type Metadata []KV

// Get returns the value of key.
func (md Metadata) Get(key string) (Value, bool) { return lookup(md, key) }

// ArchKV reads the keys of one architecture, {Arch}.KEY, through typed
// accessors (ollama's fs/ggml KV style): keys are given without the prefix.
type ArchKV struct {
	Getter
	Arch string
}

// NewArchKV reads keys of the architecture general.architecture names.
func NewArchKV(g Getter) (ArchKV, error) {
	v, ok := g.Get(KeyArchitecture)
	if !ok {
		return ArchKV{}, fmt.Errorf("no %s key", KeyArchitecture)
	}
	arch, ok := v.Str()
	if !ok || arch == "" {
		return ArchKV{}, fmt.Errorf("%s is %v, not a name", KeyArchitecture, v.Type())
	}
	return ArchKV{g, arch}, nil
}

// Key is the full name of an architecture key.
func (a ArchKV) Key(key string) string { return a.Arch + "." + key }

// Value returns the value of an architecture key.
func (a ArchKV) Value(key string) (Value, bool) { return a.Get(a.Key(key)) }

// Int returns an integer architecture key (of any integer type), or def
// when it is absent, not an integer or not above 0.
func (a ArchKV) Int(key string, def int) int {
	if v, ok := a.Value(key); ok {
		if n, ok := v.Int(); ok && n > 0 {
			return int(n)
		}
	}
	return def
}

// IntKey returns an integer key (of any integer type) of g.
func IntKey(g Getter, key string) (int64, bool) {
	v, ok := g.Get(key)
	if !ok {
		return 0, false
	}
	return v.Int()
}
