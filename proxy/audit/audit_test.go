package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
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

// readLines decodes every line of raw.
func readLines(t *testing.T, raw []byte) []Entry {
	t.Helper()
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("a line is not JSON: %v\n%s", err, sc.Text())
		}
		out = append(out, e)
	}
	return out
}

// A user a client chose is kept to MaxField bytes, marked as cut, a
// multi-byte character never split; a short one is kept whole.
func TestLongFieldsAreCut(t *testing.T) {
	var out syncBuffer
	l := New(&out, Options{ClientOf: func(*http.Request) string { return strings.Repeat("x", 1000) }})
	r := httptest.NewRequest("GET", "/token", nil)
	long := "a" + strings.Repeat("é", 700<<10)
	l.Record(r, Entry{Kind: "login", User: long, Answer: Refused, Status: 401})
	l.Record(r, Entry{Kind: "login", User: "alice", Answer: Refused, Status: 401})
	l.Close()
	got := readLines(t, []byte(out.String()))
	if len(got) != 2 {
		t.Fatalf("%d lines", len(got))
	}
	u := got[0].User
	if !strings.HasSuffix(u, Cut) || len(u) > MaxField+len(Cut) || !strings.HasPrefix(long, strings.TrimSuffix(u, Cut)) || !utf8.ValidString(u) {
		t.Fatalf("the long user is kept as %q (%d bytes)", u, len(u))
	}
	if !strings.HasSuffix(got[0].Client, Cut) || len(got[0].Client) > MaxField+len(Cut) {
		t.Fatalf("the long client is kept as %d bytes", len(got[0].Client))
	}
	if got[1].User != "alice" {
		t.Fatalf("a short user became %q", got[1].User)
	}
}

// A client's repeated refusals are written once at first, then once per
// interval with their count; another client's are its own; nothing
// counted is lost by Close.
func TestRepeatedRefusalsAreCounted(t *testing.T) {
	var out syncBuffer
	client := "192.0.2.1"
	l := New(&out, Options{RepeatEvery: 500 * time.Millisecond, ClientOf: func(*http.Request) string { return client }})
	r := httptest.NewRequest("GET", "/token", nil)
	throttled := Entry{Kind: "login", User: "alice", Answer: Refused, Reason: "login throttled", Status: 429}
	for range 30 {
		l.RecordRepeated(r, throttled)
	}
	client = "192.0.2.2"
	l.RecordRepeated(r, throttled)
	client = "192.0.2.1"
	time.Sleep(500*time.Millisecond + 3*FlushInterval)
	for range 5 {
		l.RecordRepeated(r, throttled) // the next interval
	}
	l.Close()
	var lines []string
	for _, e := range readLines(t, []byte(out.String())) {
		lines = append(lines, fmt.Sprintf("%s %d", e.Client, e.Count))
	}
	want := []string{"192.0.2.1 0", "192.0.2.2 0", "192.0.2.1 29", "192.0.2.1 5"}
	if !slices.Equal(lines, want) {
		t.Fatalf("lines (client, count): %q, want %q", lines, want)
	}
}

// A file log past MaxSize is renamed to FILE.1 (replacing an older one)
// and a new one begun, each holding whole lines.
func TestFileLogRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path+".1", []byte("an older rotation\n"), 0o600)
	l, err := Open(path, Options{MaxSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/v2/x/manifests/v1", nil)
	for i := range 2000 { // about 600 KiB of lines
		l.Record(r, Entry{Kind: "manifest", Repository: "x", Tag: fmt.Sprint(i), Answer: Hit, Status: 200})
		if i%100 == 0 {
			l.flush(false)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	for name, b := range map[string][]byte{"the file": cur, "FILE.1": old} {
		if len(b) > 64<<10+1<<10 {
			t.Errorf("%s holds %d bytes, over the bound", name, len(b))
		}
		if len(b) == 0 || b[len(b)-1] != '\n' {
			t.Errorf("%s does not end with a whole line", name)
		}
		readLines(t, b)
	}
	if bytes.Contains(old, []byte("an older rotation")) {
		t.Error("FILE.1 still holds the older rotation")
	}
	last := readLines(t, cur)
	if last[len(last)-1].Tag != "1999" {
		t.Errorf("the last line is %+v", last[len(last)-1])
	}
}
