package eval

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/ggufprune/ggufprune/internal/inputfile"
	"github.com/ggufprune/ggufprune/prune/runner"
)

// llama-perplexity's --kl-divergence-base file (tools/perplexity/perplexity.cpp),
// little-endian, no padding:
//
//	"_logits_"                        8 bytes
//	n_ctx, n_vocab, n_chunk           int32 each
//	tokens                            int32 × n_chunk·n_ctx, as tokenized (no BOS substitution)
//	per chunk, per scored position    n_ctx-1-n_ctx/2 records of nv = 2·⌈n_vocab/2⌉+4 uint16:
//	  scale, min_log_prob             float32 each (4 uint16)
//	  q[n_vocab]                      uint16, log p_i ≈ scale·q_i + min_log_prob
//	  (one zero uint16 when n_vocab is odd)
//
// Record k of a chunk holds the distribution after chunk position
// n_ctx/2 + k, which predicts the token at n_ctx/2 + k + 1. Log-probabilities
// more than 16 below the largest are stored as q = 0.

const logitsMagic = "_logits_"

// logitsFloor is the base log-probability at and below which
// llama-perplexity leaves terms out of the KLD: its file holds only the 16
// nats below the most likely token.
const logitsFloor = -16

func recordLen(nVocab int) int { return 2*((nVocab+1)/2) + 4 }

// logitsWriter writes a logits file as chunks are decoded.
type logitsWriter struct {
	w   *bufio.Writer
	rec []uint16
	buf []byte
}

func newLogitsWriter(w io.Writer, nCtx, nVocab int, tokens []int32) (*logitsWriter, error) {
	lw := &logitsWriter{w: bufio.NewWriterSize(w, 1<<20), rec: make([]uint16, recordLen(nVocab))}
	lw.buf = make([]byte, 2*len(lw.rec))
	nChunk := len(tokens) / nCtx
	lw.w.WriteString(logitsMagic)
	for _, v := range []int32{int32(nCtx), int32(nVocab), int32(nChunk)} {
		binary.Write(lw.w, binary.LittleEndian, v)
	}
	if err := binary.Write(lw.w, binary.LittleEndian, tokens[:nChunk*nCtx]); err != nil {
		return nil, err
	}
	return lw, nil
}

// record packs the logits of one scored position as llama-perplexity's
// log_softmax does (float32 arithmetic, a float64 sum of float32
// exponentials, round half to even).
func (lw *logitsWriter) record(logits []float32) error {
	maxL, minL := logits[0], logits[0]
	for _, z := range logits[1:] {
		maxL, minL = max(maxL, z), min(minL, z)
	}
	minL = max(minL, maxL-16)
	var sum float64
	for _, z := range logits {
		sum += float64(float32(math.Exp(float64(z - maxL))))
	}
	lse := float32(math.Log(sum))
	minLogProb := minL - maxL - lse
	scale := (maxL - minL) / 65535
	rec := lw.rec
	binary.LittleEndian.PutUint32(lw.buf[0:], math.Float32bits(scale))
	binary.LittleEndian.PutUint32(lw.buf[4:], math.Float32bits(minLogProb))
	q := rec[4:]
	clear(q)
	if scale != 0 {
		inv := 1 / scale
		for i, z := range logits {
			if z > minL {
				q[i] = uint16(math.RoundToEven(float64(inv * (z - minL))))
			}
		}
	}
	for i, v := range q {
		binary.LittleEndian.PutUint16(lw.buf[8+2*i:], v)
	}
	_, err := lw.w.Write(lw.buf)
	return err
}

func (lw *logitsWriter) flush() error { return lw.w.Flush() }

// logitsReader reads a logits file chunk by chunk.
type logitsReader struct {
	name                 string
	f                    *os.File
	r                    *bufio.Reader
	nCtx, nVocab, nChunk int
	tokens               []int32
	buf                  []byte
	read                 int // chunks read
}

// openLogits opens a logits file and checks its header and its size against
// what the header says, before allocating for it. What is not a regular file
// is refused without opening it (a FIFO would block the open).
func openLogits(path string) (*logitsReader, error) {
	// No size bound of its own: the header's counts are checked against the
	// file's size, and the records are streamed, one chunk in memory.
	f, st, err := inputfile.Open(path, inputfile.NoLimit)
	if err != nil {
		return nil, err
	}
	lr, err := readLogitsHeader(path, f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	lr.f = f
	return lr, nil
}

// readLogitsHeader reads the header and the tokens of a logits file of size
// bytes from f, leaving f at the first record.
func readLogitsHeader(path string, f io.Reader, size int64) (*logitsReader, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: not a llama-perplexity logits file: %s", path, fmt.Sprintf(format, args...))
	}
	r := bufio.NewReaderSize(f, 1<<20)
	var hdr [20]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, bad("%d bytes, shorter than its header", size)
	}
	if string(hdr[:8]) != logitsMagic {
		return nil, bad("it does not start with %q", logitsMagic)
	}
	nCtx := int64(int32(binary.LittleEndian.Uint32(hdr[8:])))
	nVocab := int64(int32(binary.LittleEndian.Uint32(hdr[12:])))
	nChunk := int64(int32(binary.LittleEndian.Uint32(hdr[16:])))
	switch {
	case nCtx > 1<<24:
		return nil, bad("context %d", nCtx)
	case nCtx < 1 || runner.ScoredWindow(int(nCtx)).Count < 1:
		// Without scored positions a chunk would hold only its tokens,
		// nothing to measure, and a small file could declare 2^29 of them.
		return nil, bad("a context of %d tokens has no scored positions (positions n_ctx/2 to n_ctx-2 are scored: at least 3 tokens)", nCtx)
	case nVocab < 1 || nVocab > 1<<24:
		return nil, bad("vocabulary of %d tokens", nVocab)
	case nChunk < 1 || nChunk > 1<<30/nCtx:
		return nil, bad("%d chunks", nChunk)
	}
	// Every chunk takes its tokens and at least one record, so a file of
	// the right size bounds the chunk count, and with it the token array
	// allocated below.
	perChunk := 4*nCtx + int64(runner.ScoredWindow(int(nCtx)).Count)*int64(recordLen(int(nVocab)))*2
	const head = 20
	if nChunk > (math.MaxInt64-head)/perChunk {
		return nil, bad("sizes overflow")
	}
	if want := head + nChunk*perChunk; size != want {
		return nil, bad("it has %d bytes; %d chunks of %d tokens with a vocabulary of %d need %d (truncated, or not the file its header describes)", size, nChunk, nCtx, nVocab, want)
	}
	lr := &logitsReader{name: path, r: r, nCtx: int(nCtx), nVocab: int(nVocab), nChunk: int(nChunk)}
	lr.tokens = make([]int32, nCtx*nChunk)
	if err := binary.Read(r, binary.LittleEndian, lr.tokens); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, t := range lr.tokens {
		if t < 0 || int64(t) >= nVocab {
			return nil, bad("token %d at position %d is outside the vocabulary of %d", t, i, nVocab)
		}
	}
	lr.buf = make([]byte, 2*recordLen(int(nVocab)))
	return lr, nil
}

// scored is the number of records per chunk.
func (lr *logitsReader) scored() int { return runner.ScoredWindow(lr.nCtx).Count }

// chunk reads the next chunk's records, dequantized into dst[k] (n_vocab
// log-probabilities each). A record llama-perplexity cannot have written (a
// scale or base that is not finite, a negative scale, a positive base
// log-probability) is refused naming the chunk and position: it would make
// the perplexity and divergences NaN.
func (lr *logitsReader) chunk(dst [][]float32) error {
	ci := lr.read
	lr.read++
	first := runner.ScoredWindow(lr.nCtx).First
	for k := range dst {
		if _, err := io.ReadFull(lr.r, lr.buf); err != nil {
			return fmt.Errorf("%s: %w", lr.name, errors.Join(err, io.ErrUnexpectedEOF))
		}
		scale := math.Float32frombits(binary.LittleEndian.Uint32(lr.buf[0:]))
		minLP := math.Float32frombits(binary.LittleEndian.Uint32(lr.buf[4:]))
		// llama-perplexity writes scale = (max - min)/65535 ≥ 0 and
		// min_log_prob = min - max - log Σ exp(z - max) ≤ 0; the largest
		// value a record can hold must be finite too.
		top := scale*65535 + minLP // the largest value of the record
		if !(scale >= 0) || !(minLP <= 0) || math.IsInf(float64(scale), 0) || math.IsInf(float64(minLP), 0) || math.IsInf(float64(top), 0) {
			return fmt.Errorf("%s: chunk %d of %d, position %d: a record with scale %v and minimum log-probability %v; llama-perplexity writes a finite scale ≥ 0 and minimum ≤ 0 (a damaged file?)", lr.name, ci+1, lr.nChunk, first+k, scale, minLP)
		}
		for i := range dst[k] {
			dst[k][i] = scale*float32(binary.LittleEndian.Uint16(lr.buf[8+2*i:])) + minLP
		}
	}
	return nil
}

func (lr *logitsReader) Close() error { return lr.f.Close() }
