// Package audit is the pull audit log: one JSON line per manifest
// answered (the pulls), per request refused (a failed login, a token
// that does not grant the pull, a throttled login), and per blob when
// asked for. It names who pulled what, from where, and whether the cache
// or the upstream answered; it never holds a password or a token.
package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
	"unicode/utf8"
)

// Stream is every line's "stream" field: on Kubernetes the audit lines
// share the proxy's output with nothing else but its own logs, and log
// shippers select them by it.
const Stream = "audit"

// Answers: how a request was answered.
const (
	Hit       = "hit"       // from the cache, without asking the upstream for the bytes
	Miss      = "miss"      // downloaded from the upstream for it
	Coalesced = "coalesced" // shared a download already running for another request
	Stale     = "stale"     // the cached copy, without the upstream's word; Reason says why
	Refused   = "refused"   // not served: Reason says why
	Failed    = "failed"    // an error: the status says which
)

// Entry is one line.
type Entry struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"`
	Tenant string    `json:"tenant"`
	// User is the token's subject, "anonymous" for an open cache, the
	// name a failed login gave, or "" for a token that proves nobody.
	User string `json:"user"`
	// Client is the client's address (the one X-Forwarded-For gives,
	// behind a trusted proxy).
	Client string `json:"client"`
	Method string `json:"method"`
	// Kind is manifest, blob, or login.
	Kind       string `json:"kind"`
	Registry   string `json:"registry,omitempty"`
	Repository string `json:"repository,omitempty"`
	// Tag is the tag asked for; Digest the digest served (or asked for).
	Tag    string `json:"tag,omitempty"`
	Digest string `json:"digest,omitempty"`
	Answer string `json:"answer"`
	Reason string `json:"reason,omitempty"`
	// Verification, on a manifest's line when a rule of the verify
	// policy applied to it: "verified", "refused: REASON", or
	// "audited: REASON" (failed, and served: audit mode).
	Verification    string  `json:"verification,omitempty"`
	Status          int     `json:"status"`
	Bytes           int64   `json:"bytes"`
	DurationSeconds float64 `json:"durationSeconds"`
	// Count, on a line that stands for a client's repeated refusals (a
	// throttled login), is how many it stands for: the refusals alike
	// since that client's previous such line. Absent: one.
	Count int `json:"count,omitempty"`
}

// MaxField is the most of a field a client chooses (the user a login
// names, its address as a trusted proxy forwards it) that a line keeps;
// a longer one is cut there and ends with Cut.
const MaxField = 128

// Cut ends a field that was cut at MaxField bytes.
const Cut = "…(cut)"

// CutField bounds a field a client chose to MaxField bytes, on a rune
// boundary, marking a cut one: for the proxy's own log lines too.
func CutField(s string) string {
	if len(s) <= MaxField {
		return s
	}
	n := MaxField
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + Cut
}

// Options say what a Log records.
type Options struct {
	Tenant string
	// Blobs logs every blob request too (many per pull).
	Blobs bool
	// ClientOf is the client's address for a request (trusted proxies
	// considered); the connection's remote address without it.
	ClientOf func(*http.Request) string
	// MaxSize bounds a file log: past it the file is renamed to
	// FILE.1 (replacing an older one) and a new one begun, so the log
	// takes at most about twice this on disk. 0: unbounded.
	MaxSize int64
	// RepeatEvery is how often a client's repeated refusals are written
	// (RecordRepeated); a minute without it.
	RepeatEvery time.Duration
}

// DefaultRepeatEvery is how often a client's repeated refusals are
// written at most.
const DefaultRepeatEvery = time.Minute

// Log writes entries, one line each, whole lines only, in the order
// they are recorded. A request only adds its entry to a batch; the batch
// is encoded and written out every FlushInterval (and on Close), so a
// request never waits on the file, and many clients are not serialised on
// a write each.
type Log struct {
	mu      sync.Mutex
	pending []Entry // recorded, not yet written
	spare   []Entry // the last batch written, kept for its capacity

	// repeats are the clients whose repeated refusals are being
	// counted, by client, kind and reason (guarded by mu).
	repeats map[string]*repeat

	writing sync.Mutex // one writer at a time, batches in order
	out     *bufio.Writer
	enc     *json.Encoder
	file    *rotating // nil: not a file of ours
	close   func() error

	o    Options
	stop chan struct{}
	done chan struct{}
}

const (
	// FlushInterval bounds how long a line waits in memory: what a
	// crash (SIGKILL) can lose. A clean stop loses nothing.
	FlushInterval = 200 * time.Millisecond
	// maxPending bounds the batch: a request that fills it writes it.
	maxPending = 16 << 10
	// maxRepeats bounds the clients counted at once; past it a repeated
	// refusal is written as any other (a line each, each field cut).
	maxRepeats = 10_000
)

// repeat is one client's repeated refusals: the first was written, and
// the ones since are counted until the interval ends; then the last of
// them is written with the count, and a new interval begins.
type repeat struct {
	until time.Time
	last  Entry
	n     int
}

// Open returns a log writing to dest: "-" for standard output, else a
// file, appended to (made 0600: it names users and their addresses).
func Open(dest string, o Options) (*Log, error) {
	if dest == "-" {
		return New(os.Stdout, o), nil
	}
	f, err := openRotating(dest, o.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := New(f, o)
	l.file, l.close = f, f.Close
	return l, nil
}

// New returns a log writing to w; Close writes out the rest.
func New(w io.Writer, o Options) *Log {
	if o.ClientOf == nil {
		o.ClientOf = func(r *http.Request) string { return r.RemoteAddr }
	}
	if o.RepeatEvery <= 0 {
		o.RepeatEvery = DefaultRepeatEvery
	}
	out := bufio.NewWriterSize(w, 64<<10)
	l := &Log{out: out, enc: json.NewEncoder(out), o: o, close: func() error { return nil },
		repeats: map[string]*repeat{}, stop: make(chan struct{}), done: make(chan struct{})}
	go l.flushEvery(FlushInterval)
	return l
}

func (l *Log) flushEvery(d time.Duration) {
	defer close(l.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.flush(false)
		case <-l.stop:
			return
		}
	}
}

// flush encodes and writes the batch, with the counted refusals whose
// interval has ended (all of them, at the end).
func (l *Log) flush(end bool) error {
	l.writing.Lock()
	defer l.writing.Unlock()
	l.mu.Lock()
	now := time.Now()
	for key, rp := range l.repeats {
		if !end && now.Before(rp.until) {
			continue
		}
		if rp.n == 0 {
			delete(l.repeats, key) // the client stopped: its next refusal is written at once
			continue
		}
		e := rp.last
		e.Count = rp.n
		l.pending = append(l.pending, e)
		rp.n, rp.last, rp.until = 0, Entry{}, now.Add(l.o.RepeatEvery)
	}
	batch := l.pending
	l.pending = l.spare[:0]
	l.mu.Unlock()
	var errs []error
	for i := range batch {
		l.enc.Encode(&batch[i]) // an Entry always encodes; a line each
		if l.file != nil && l.file.full(l.out.Buffered()) {
			// Between lines: each file holds whole lines.
			errs = append(errs, l.out.Flush(), l.file.rotate())
		}
	}
	clear(batch) // no request's strings kept alive
	l.spare = batch
	return errors.Join(append(errs, l.out.Flush())...)
}

// Blobs reports whether blob requests are logged.
func (l *Log) Blobs() bool { return l.o.Blobs }

// Record writes e for request r, which fills in the time, the tenant,
// the client and the method.
func (l *Log) Record(r *http.Request, e Entry) {
	l.fill(r, &e)
	l.mu.Lock()
	full := l.add(e)
	l.mu.Unlock()
	if full {
		l.flush(false)
	}
}

// RecordRepeated writes e, a refusal a client can repeat as fast as it
// likes (a throttled login), at most once per client per RepeatEvery:
// the first at once, the ones after it counted, and written as one line
// (the last of them, with Count) when the interval ends.
func (l *Log) RecordRepeated(r *http.Request, e Entry) {
	l.fill(r, &e)
	key := e.Client + "\x00" + e.Kind + "\x00" + e.Reason
	l.mu.Lock()
	if rp := l.repeats[key]; rp != nil {
		rp.n++
		rp.last = e
		l.mu.Unlock()
		return
	}
	if len(l.repeats) < maxRepeats {
		l.repeats[key] = &repeat{until: e.Time.Add(l.o.RepeatEvery)}
	}
	full := l.add(e)
	l.mu.Unlock()
	if full {
		l.flush(false)
	}
}

// fill sets what every line has, and cuts what a client chose.
func (l *Log) fill(r *http.Request, e *Entry) {
	e.Time, e.Stream, e.Tenant = time.Now().UTC(), Stream, l.o.Tenant
	e.Client, e.Method = CutField(l.o.ClientOf(r)), r.Method
	if e.User == "" && e.Answer != Refused {
		e.User = "anonymous" // a refused request's user is who it claimed, or nobody
	}
	e.User = CutField(e.User)
}

// add queues e (mu held), reporting whether the batch is full.
func (l *Log) add(e Entry) bool {
	l.pending = append(l.pending, e)
	return len(l.pending) >= maxPending
}

// Close writes out what is buffered and closes the file, if the log has
// one.
func (l *Log) Close() error {
	close(l.stop)
	<-l.done
	return errors.Join(l.flush(true), l.close())
}

// rotating is a log file bounded by renaming it to FILE.1 when it is
// full, and beginning a new one.
type rotating struct {
	path string
	max  int64 // 0: unbounded
	f    *os.File
	size int64
}

func openRotating(path string, max int64) (*rotating, error) {
	r := &rotating{path: path, max: max}
	return r, r.open()
}

// open opens the file, appended to (made 0600: it names users and their
// addresses).
func (r *rotating) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, info.Size()
	return nil
}

func (r *rotating) Write(p []byte) (int, error) {
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

// full: with buffered bytes still to come, the file has reached its
// bound.
func (r *rotating) full(buffered int) bool {
	return r.max > 0 && r.size+int64(buffered) >= r.max
}

// rotate renames the file to FILE.1 and begins a new one. Should that
// fail, the lines go on to the old file, and the next line tries again.
func (r *rotating) rotate() error {
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return fmt.Errorf("audit log: rotating: %w", err)
	}
	old := r.f
	if err := r.open(); err != nil {
		return fmt.Errorf("audit log: rotating: %w", err) // the old file, renamed, still takes the lines
	}
	return old.Close()
}

func (r *rotating) Close() error { return r.f.Close() }
