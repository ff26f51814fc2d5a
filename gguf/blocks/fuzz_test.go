package blocks

import (
	"reflect"
	"testing"
)

// A block list reads back as it was written, whatever the input.
func FuzzParseList(f *testing.F) {
	for _, s := range []string{"3,5-7", "0", "1-1", "9,2-4,2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list, err := ParseList(s)
		if err != nil {
			return
		}
		again, err := ParseList(FormatList(list))
		if err != nil || !reflect.DeepEqual(again, list) {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, list, FormatList(list), again, err)
		}
	})
}
