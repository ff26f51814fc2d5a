package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ggufprune/ggufprune/internal/fixture"
)

// Healing is refused a ridge that is not a positive finite number, and says
// loudly (stderr and JSON) when it cannot be trusted: a calibration of too
// few distinct tokens for the map's width, or a map that does worse than
// plain removal on the held-out calibration chunks.
func TestHealChecks(t *testing.T) {
	in := model(t, "stories260K.gguf")
	calib := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	dir := t.TempDir()
	for _, r := range []string{"NaN", "Inf", "-Inf", "-1", "0"} {
		runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "--ridge", r, "-f", calib, "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "--ridge is a positive finite number")
	}
	if _, err := os.Stat(filepath.Join(dir, "x.gguf")); !os.IsNotExist(err) {
		t.Fatal("an output was written")
	}

	// One token repeated: the fit is underdetermined (and exact on the
	// calibration), which the warning says.
	same := filepath.Join(dir, "same.txt")
	if err := os.WriteFile(same, []byte(strings.Repeat("the ", 20000)), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "-f", same, "-c", "128", "--chunks", "8", "-o", filepath.Join(dir, "same.gguf"), "--json").ok(t)
	var res struct{ Warnings []string }
	decode(t, r.stdout, &res)
	if len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "distinct tokens") || !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, "distinct tokens") {
		t.Fatalf("no warning of a uniform calibration:\n%s\n%s", r.stdout, r.stderr)
	}

	// A ridge so large that the output's map is zero: the FFN output of
	// block 1 is dropped, which the held-out chunks show to be worse than
	// removal. (A refitted projection's ridge shrinks its change to zero:
	// plain removal.)
	r = runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "--heal-fit", "output", "--ridge", "1e300", "-f", calib, "-c", "128", "--chunks", "8", "-o", filepath.Join(dir, "zero.gguf"), "--json").ok(t)
	var zero struct {
		Warnings []string
		Heal     struct {
			Runs []struct {
				HeldOutResidual float64 `json:"held_out_residual"`
			}
		}
	}
	decode(t, r.stdout, &zero)
	if len(zero.Heal.Runs) != 1 || zero.Heal.Runs[0].HeldOutResidual <= 1 || len(zero.Warnings) == 0 || !strings.Contains(zero.Warnings[0], "worse than plain removal") || !strings.Contains(r.stderr, "held-out") {
		t.Fatalf("no warning of a map worse than removal:\n%s\n%s", r.stdout, r.stderr)
	}

	// A sound healing: held-out chunks measured, below 1, no warning; by
	// default the block after the run gets a map too.
	r = runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "-f", calib, "-c", "128", "--chunks", "16", "-o", filepath.Join(dir, "good.gguf"), "--json").ok(t)
	var good struct {
		Warnings []string
		Heal     struct {
			Runs []struct {
				HeldOutResidual float64 `json:"held_out_residual"`
				Form            string
				After           []struct {
					Block    int
					Tensors  []string
					Residual float64
					Form     string
				}
			}
		}
	}
	decode(t, r.stdout, &good)
	if len(good.Warnings) != 0 || len(good.Heal.Runs) != 1 || !(good.Heal.Runs[0].HeldOutResidual > 0 && good.Heal.Runs[0].HeldOutResidual < 1) {
		t.Fatalf("sound healing: %s", r.stdout)
	}
	if a := good.Heal.Runs[0].After; good.Heal.Runs[0].Form != "projection" || len(a) != 1 || a[0].Block != 3 || a[0].Tensors[0] != "blk.3.ffn_down.weight" || a[0].Form != "projection" || !(a[0].Residual > 0 && a[0].Residual < 1) {
		t.Fatalf("the map after the run: %s", r.stdout)
	}
	runCLI(t, "prune", "-m", in, "--layers", "2", "--heal-maps", "2", "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "--heal-maps")
	runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "--heal-maps", "0", "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "--heal-maps")
	runCLI(t, "prune", "-m", in, "--layers", "2", "--heal", "--heal-fit", "lstsq", "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "--heal-fit")
	runCLI(t, "prune", "-m", in, "--layers", "2", "--heal-fit", "output", "-o", filepath.Join(dir, "x.gguf")).fails(t, 2, "--heal-fit")
}

// prune --compensate: the JSON reports each cut's α and the scaled blocks,
// the dry run lists the tensors it would rewrite and writes nothing, with
// --heal a healed run is left to its map, and removing experts refuses it.
func TestCompensateCLI(t *testing.T) {
	in := model(t, "stories260K.gguf")
	calib := fixture.Asset(t, "text/tinystories/tinystories_val_first100.txt")
	dir := t.TempDir()
	out := filepath.Join(dir, "c.gguf")
	r := runCLI(t, "prune", "-m", in, "--layers", "2", "--compensate", "-f", calib, "-c", "128", "--chunks", "4", "-o", out, "--json").ok(t)
	var res struct {
		Compensation struct {
			Cuts []struct {
				First, Last int
				Alpha       float64
			}
			Scales  map[string]float64
			Tensors []string
		}
	}
	decode(t, r.stdout, &res)
	c := res.Compensation
	if len(c.Cuts) != 1 || !(c.Cuts[0].Alpha > 0) || len(c.Scales) != 2 || c.Scales["3"] != c.Scales["4"] || len(c.Tensors) != 4 {
		t.Fatalf("%+v", c)
	}
	if d := c.Scales["3"]*c.Cuts[0].Alpha - 1; d > 1e-12 || d < -1e-12 {
		t.Fatalf("scale %v is not 1/alpha (%v)", c.Scales["3"], c.Cuts[0].Alpha)
	}
	runCLI(t, "eval", "-m", out, "-f", calib, "-c", "128", "--chunks", "2").ok(t)

	dry := filepath.Join(dir, "dry.gguf")
	r = runCLI(t, "prune", "-m", in, "--layers", "2", "--compensate", "--dry-run", "-o", dry).ok(t)
	if !strings.Contains(r.stdout, "would scale") || !strings.Contains(r.stdout, "blk.4.ffn_down.weight") {
		t.Fatalf("dry run:\n%s", r.stdout)
	}
	if _, err := os.Stat(dry); !os.IsNotExist(err) {
		t.Fatal("a dry run wrote its output")
	}
	r = runCLI(t, "prune", "-m", in, "--layers", "2", "--compensate", "--heal", "--dry-run").ok(t)
	if !strings.Contains(r.stdout, "not compensated") || !strings.Contains(r.stdout, "0 tensors") {
		t.Fatalf("healed and compensated, dry run:\n%s", r.stdout)
	}
	runCLI(t, "prune", "-m", model(t, "moe8-f16.gguf"), "--experts", "2", "--compensate", "-f", calib, "-o", filepath.Join(dir, "e.gguf")).fails(t, 2, "--compensate")
}
