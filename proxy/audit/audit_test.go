package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a writer tests read while the log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Many requests at once: every line whole and JSON, none lost by Close,
// and lines reach the writer within the flush interval meanwhile.
func TestLinesAreWholeAndWrittenOut(t *testing.T) {
	var out syncBuffer
	l := New(&out, Options{Tenant: "ns/a", ClientOf: func(*http.Request) string { return "192.0.2.1" }})
	r := httptest.NewRequest("GET", "/v2/x/manifests/v1", nil)
	l.Record(r, Entry{Kind: "manifest", Repository: "x", Tag: "v1", Answer: Hit, Status: 200})
	deadline := time.Now().Add(10 * FlushInterval)
	for out.String() == "" && time.Now().Before(deadline) {
		time.Sleep(FlushInterval / 4)
	}
	if out.String() == "" {
		t.Fatalf("a line still waits after %s", 10*FlushInterval)
	}
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			for range 100 {
				l.Record(r, Entry{Kind: "blob", Repository: "x", Digest: "sha256:" + string(rune('a'+i%26)), Answer: Miss, Status: 200, Bytes: 1 << 20})
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader([]byte(out.String())))
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", n, err, sc.Text())
		}
		if e.Stream != Stream || e.Tenant != "ns/a" || e.Client != "192.0.2.1" || e.User != "anonymous" || e.Method != "GET" || e.Time.IsZero() {
			t.Fatalf("line %d: %+v", n, e)
		}
		n++
	}
	if n != 1+64*100 {
		t.Fatalf("%d lines, want %d", n, 1+64*100)
	}
}
