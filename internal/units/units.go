// Package units reads and writes sizes as people give them: bytes with
// binary or decimal units, or a percentage of a whole.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// ParseSize reads a size: bytes, with a unit (3GiB, 2.5GB, 800MiB), or a
// percentage of whole (70%).
func ParseSize(s string, whole int64) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if p, ok := strings.CutSuffix(t, "%"); ok {
		t, mult = p, float64(whole)/100
	} else {
		for _, u := range sizeUnits {
			if p, ok := strings.CutSuffix(t, u.suffix); ok {
				t, mult = strings.TrimSpace(p), u.mult
				break
			}
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	// NaN fails every comparison; a size must fit in an int64 (8 EiB).
	if err != nil || !(f > 0) || !(f*mult < math.MaxInt64/2) || f*mult < 1 {
		return 0, fmt.Errorf("%q: give bytes (1 to 4 EiB), a size like 3GiB or 2.5GB, or a percentage like 70%%", s)
	}
	return int64(f * mult), nil
}

// HumanBytes writes a byte count with a binary unit: "11.60 MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
