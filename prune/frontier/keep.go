package frontier

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/ggufprune/ggufprune/gguf/imatrix"
	"github.com/ggufprune/ggufprune/internal/atomicfile"
	"github.com/ggufprune/ggufprune/internal/inputfile"
	"github.com/ggufprune/ggufprune/prune"
)

// What a keep folder holds besides the candidates: each candidate's
// sidecar (FILE.gguf.json), the scores and the computed importance matrix,
// so that a rerun with the same folder, model and calibration makes none
// of them again.

// sidecar records how a kept candidate was made. A rerun reuses the file
// only when every field is what it would make now and the file still has
// the size recorded and reads as a model.
type sidecar struct {
	Model       string `json:"model"`
	Fingerprint string `json:"fingerprint"` // of the input model (prune.Model.Fingerprint)
	Spec        Spec   `json:"spec"`
	Imatrix     string `json:"imatrix"` // how the quantization was guided (see Options.imatrixSource)
	Healing     string `json:"healing,omitempty"`
	Bytes       int64  `json:"bytes"`
}

// maxSidecar bounds what is read of a sidecar or a scores cache: a few
// lines of JSON, plus a score report (well under 1 MiB, see
// prune.ReadScoreReport).
const maxSidecar = 16 << 20

func sidecarPath(file string) string { return file + ".json" }

// reusable reports whether file is a finished candidate that sc describes.
// A file or sidecar that is missing, unreadable or describes something
// else is not reused (and is replaced): a keep folder is a cache.
func reusable(file string, want sidecar) bool {
	b, err := inputfile.ReadAll(sidecarPath(file), maxSidecar)
	if err != nil {
		return false
	}
	var got sidecar
	if json.Unmarshal(b, &got) != nil {
		return false
	}
	want.Bytes, want.Model = got.Bytes, got.Model
	if !equalSidecar(got, want) {
		return false
	}
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() || st.Size() != got.Bytes {
		return false
	}
	// The file reads as a model llama.cpp would load: header, tensors
	// inside the file, the checks every input gets.
	pm, err := prune.Open(file)
	if err != nil {
		return false
	}
	pm.Close()
	return true
}

// equalSidecar compares two sidecars, a nil list and an empty one alike
// (JSON reads [] as empty).
func equalSidecar(a, b sidecar) bool {
	norm := func(s *sidecar) {
		if len(s.Spec.Removed) == 0 {
			s.Spec.Removed = nil
		}
		if len(s.Spec.ExpertsRemoved) == 0 {
			s.Spec.ExpertsRemoved = nil
		}
	}
	norm(&a)
	norm(&b)
	return reflect.DeepEqual(a, b)
}

// writeSidecar records how file was made, after the file is in place.
func writeSidecar(file string, sc sidecar) error {
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	sc.Bytes = st.Size()
	return atomicfile.Write(sidecarPath(file), func(f *os.File) error {
		enc := json.NewEncoder(f)
		enc.SetIndent("", "  ")
		return enc.Encode(sc)
	})
}

// scoresCache is the scoring pass of a keep folder: its report and what it
// was made on.
type scoresCache struct {
	Key    scoreKey           `json:"key"`
	Report *prune.ScoreReport `json:"report"`
}

// scoreKey is what a scoring pass depends on.
type scoreKey struct {
	Fingerprint string `json:"fingerprint"`
	Calibration string `json:"calibration"`
	Ctx         int    `json:"ctx"`
	Chunks      int    `json:"chunks"` // as asked (0: all)
	Imatrix     bool   `json:"imatrix"`
	Experts     bool   `json:"experts,omitempty"` // expert scores too
}

func cacheBase(keep, model string) string {
	return filepath.Join(keep, strings.TrimSuffix(filepath.Base(model), filepath.Ext(model))+".frontier")
}

// ScoresFile and ImatrixFile are where a keep folder holds the scores
// (with what they were made on) and the importance matrix computed in the
// scoring pass, for the model at path.
func ScoresFile(keep, path string) string  { return cacheBase(keep, path) + "-scores.json" }
func ImatrixFile(keep, path string) string { return cacheBase(keep, path) + ".imatrix" }

// readScores reads a keep folder's scoring pass made with key for m, or
// returns nil when there is none that fits.
func readScores(keep string, m *prune.Model, key scoreKey) (*prune.ScoreReport, *imatrix.Matrix) {
	b, err := inputfile.ReadAll(ScoresFile(keep, m.Path), maxSidecar)
	if err != nil {
		return nil, nil
	}
	var c scoresCache
	if json.Unmarshal(b, &c) != nil || c.Key != key || c.Report == nil || c.Report.Check(m) != nil {
		return nil, nil
	}
	var im *imatrix.Matrix
	if key.Imatrix {
		if im, err = imatrix.Read(ImatrixFile(keep, m.Path)); err != nil || im.CheckModel(m.GGUF) != nil {
			return nil, nil
		}
	}
	return c.Report, im
}

// writeScores keeps a scoring pass: the imatrix first, so that a scores
// file never names a pass whose imatrix is missing.
func writeScores(keep string, m *prune.Model, key scoreKey, rep *prune.ScoreReport, im *imatrix.Matrix) error {
	if im != nil {
		if err := im.Write(ImatrixFile(keep, m.Path)); err != nil {
			return err
		}
	}
	if rep == nil {
		return errors.New("frontier: no scores to keep")
	}
	return atomicfile.Write(ScoresFile(keep, m.Path), func(f *os.File) error {
		enc := json.NewEncoder(f)
		enc.SetIndent("", "  ")
		if err := enc.Encode(scoresCache{Key: key, Report: rep}); err != nil {
			return fmt.Errorf("%s: %w", f.Name(), err)
		}
		return nil
	})
}
