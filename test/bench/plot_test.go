package main

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The plot is a PNG of two panels, whatever the numbers.
func TestWritePlot(t *testing.T) {
	s := []series{{name: "depproxy", byCli: map[int]measure{}}, {name: "Distribution (proxy mode)", byCli: map[int]measure{}}}
	for _, c := range plotClients {
		s[0].byCli[c] = measure{upstream: 1, wall: time.Duration(c) * 40 * time.Millisecond}
		s[1].byCli[c] = measure{upstream: float64(c) / 2, wall: time.Duration(c) * 150 * time.Millisecond}
	}
	path := filepath.Join(t.TempDir(), "bench.png")
	if p := os.Getenv("DEPPROXY_PLOT"); p != "" {
		path = p
	}
	if err := writePlot(path, "test", s); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 800 || b.Dy() < 300 {
		t.Errorf("plot is %v", b)
	}
}
