package gguf

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
)

// fingerprintSample is how many bytes of each tensor's data the fingerprint reads.
const fingerprintSample = 4096

// Fingerprint identifies a model's contents cheaply: a SHA-256 of every
// shard's header (metadata and tensor infos) and of the first 4 KiB of every
// tensor's data. Two files with the same fingerprint hold the same model for
// all practical purposes; a fine-tune of the same architecture differs.
func (m *Model) Fingerprint() (string, error) {
	h := sha256.New()
	for _, f := range m.Shards {
		if _, err := io.Copy(h, io.NewSectionReader(f.r, 0, f.DataOffset)); err != nil {
			return "", err
		}
	}
	for _, t := range m.AllTensors() {
		d := m.TensorData(t)
		if _, err := io.Copy(h, io.NewSectionReader(d, 0, min(d.Size(), fingerprintSample))); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
