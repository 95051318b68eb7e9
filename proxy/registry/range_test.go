package registry

import "testing"

func TestRangeEnd(t *testing.T) {
	for _, c := range []struct {
		header string
		end    int64
		ok     bool
	}{
		{"bytes=0-1023", 1024, true},
		{"bytes=100-", 5000, true},
		{"bytes=-51", 5000, true},
		{"bytes=4000-9999", 5000, true}, // past the end: the blob's end
		{"bytes=0-9,20-29", 0, false},
		{"bytes=a-b", 0, false},
		{"items=0-9", 0, false},
		{"bytes=0--1", 0, false},
	} {
		end, ok := rangeEnd(c.header, 5000)
		if end != c.end || ok != c.ok {
			t.Errorf("rangeEnd(%q) = %d, %v; want %d, %v", c.header, end, ok, c.end, c.ok)
		}
	}
}
