package prune_test

import (
	"testing"

	"github.com/ggufprune/ggufprune/prune"
)

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"3GiB": 3 << 30, "2.5GB": 2.5e9, "70%": 700, "123": 123, "1.5 MiB": 1.5 * (1 << 20)} {
		got, err := prune.ParseSize(in, 1000)
		if err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "GB", "-1GB", "x%", "NaN", "nan%", "1e19", "9223372036854775807", "Inf", "0.1"} {
		if _, err := prune.ParseSize(bad, 1000); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for in, want := range map[string]int{"3": 3, "25%": 4, "1%": 1} {
		if got, err := prune.ParseCount(in, 16); err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"nan%", "NaN", "0", "-2", "100%", "0%", "x"} {
		if got, err := prune.ParseCount(bad, 16); err == nil {
			t.Errorf("%q accepted as %d", bad, got)
		}
	}
}
