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
	Tag             string  `json:"tag,omitempty"`
	Digest          string  `json:"digest,omitempty"`
	Answer          string  `json:"answer"`
	Reason          string  `json:"reason,omitempty"`
	Status          int     `json:"status"`
	Bytes           int64   `json:"bytes"`
	DurationSeconds float64 `json:"durationSeconds"`
}

// Options say what a Log records.
type Options struct {
	Tenant string
	// Blobs logs every blob request too (many per pull).
	Blobs bool
	// ClientOf is the client's address for a request (trusted proxies
	// considered); the connection's remote address without it.
	ClientOf func(*http.Request) string
}

// Log writes entries, one line each, whole lines only, in the order
// they are recorded. A request only adds its entry to a batch; the batch
// is encoded and written out every FlushInterval (and on Close), so a
// request never waits on the file, and many clients are not serialised on
// a write each.
type Log struct {
	mu      sync.Mutex
	pending []Entry // recorded, not yet written
	spare   []Entry // the last batch written, kept for its capacity

	writing sync.Mutex // one writer at a time, batches in order
	out     *bufio.Writer
	enc     *json.Encoder
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
)

// Open returns a log writing to dest: "-" for standard output, else a
// file, appended to (made 0600: it names users and their addresses).
func Open(dest string, o Options) (*Log, error) {
	if dest == "-" {
		return New(os.Stdout, o), nil
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := New(f, o)
	l.close = f.Close
	return l, nil
}

// New returns a log writing to w; Close writes out the rest.
func New(w io.Writer, o Options) *Log {
	if o.ClientOf == nil {
		o.ClientOf = func(r *http.Request) string { return r.RemoteAddr }
	}
	out := bufio.NewWriterSize(w, 64<<10)
	l := &Log{out: out, enc: json.NewEncoder(out), o: o, close: func() error { return nil },
		stop: make(chan struct{}), done: make(chan struct{})}
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
			l.flush()
		case <-l.stop:
			return
		}
	}
}

// flush encodes and writes the batch.
func (l *Log) flush() error {
	l.writing.Lock()
	defer l.writing.Unlock()
	l.mu.Lock()
	batch := l.pending
	l.pending = l.spare[:0]
	l.mu.Unlock()
	for i := range batch {
		l.enc.Encode(&batch[i]) // an Entry always encodes; a line each
	}
	clear(batch) // no request's strings kept alive
	l.spare = batch
	return l.out.Flush()
}

// Blobs reports whether blob requests are logged.
func (l *Log) Blobs() bool { return l.o.Blobs }

// Record writes e for request r, which fills in the time, the tenant,
// the client and the method.
func (l *Log) Record(r *http.Request, e Entry) {
	e.Time, e.Stream, e.Tenant = time.Now().UTC(), Stream, l.o.Tenant
	e.Client, e.Method = l.o.ClientOf(r), r.Method
	if e.User == "" && e.Answer != Refused {
		e.User = "anonymous" // a refused request's user is who it claimed, or nobody
	}
	l.mu.Lock()
	l.pending = append(l.pending, e)
	full := len(l.pending) >= maxPending
	l.mu.Unlock()
	if full {
		l.flush()
	}
}

// Close writes out what is buffered and closes the file, if the log has
// one.
func (l *Log) Close() error {
	close(l.stop)
	<-l.done
	return errors.Join(l.flush(), l.close())
}
