package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnavailable is a storage that does not answer in time, or that did
// not a moment ago: the cache passes through to the upstream, as for any
// storage outage.
var ErrUnavailable = errors.New("storage does not answer")

// DefaultTimeout bounds each storage call: well under a client's
// patience, so that a storage that hangs (a stopped MinIO, a partition)
// costs a pull seconds, then nothing while it stays down.
const DefaultTimeout = 5 * time.Second

// downFor is how long a storage that did not answer is passed over
// before one call tries it again.
const downFor = 5 * time.Second

// health is whether a storage answers. A call that runs out of time
// marks it down: for downFor every call fails at once, then one call at
// a time tries it, and the first that is answered marks it up again.
type health struct {
	timeout  time.Duration
	now      func() time.Time
	timeouts atomic.Int64

	mu        sync.Mutex
	downUntil time.Time // zero: up
	probing   bool
}

func newHealth(timeout time.Duration) *health {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &health{timeout: timeout, now: time.Now}
}

// admit lets a call through, or says the storage is down; probe is true
// for the one call that tries a storage that was down.
func (h *health) admit() (probe bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.downUntil.IsZero():
		return false, nil
	case h.now().Before(h.downUntil) || h.probing:
		return false, fmt.Errorf("%w (since a call ran out of time; trying again shortly)", ErrUnavailable)
	}
	h.probing = true
	return true, nil
}

// settle records how a call went: out of time marks the storage down,
// any answer (an error of the storage's own included) marks it up.
func (h *health) settle(probe, timedOut bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if probe {
		h.probing = false
	}
	if timedOut {
		h.timeouts.Add(1)
		h.downUntil = h.now().Add(downFor)
		return
	}
	h.downUntil = time.Time{}
}

func (h *health) up() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.downUntil.IsZero()
}

// call runs fn with the storage's deadline. A call that runs out of
// time (and not because its caller gave up) is ErrUnavailable.
func (h *health) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	probe, err := h.admit()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	err = fn(callCtx)
	timedOut := err != nil && errors.Is(callCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	h.settle(probe, timedOut)
	if timedOut {
		return fmt.Errorf("%s: %w within %s", op, ErrUnavailable, h.timeout)
	}
	return err
}

// watchdog is a deadline that moves while the storage makes progress:
// for uploads and listings, whose whole length depends on their size,
// the storage may be silent for the timeout at most. Stop it while
// waiting on anything but the storage.
type watchdog struct {
	timer  *time.Timer
	fired  atomic.Bool
	d      time.Duration
	cancel context.CancelFunc
}

func (h *health) watch(ctx context.Context) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchdog{d: h.timeout, cancel: cancel}
	w.timer = time.AfterFunc(h.timeout, func() { w.fired.Store(true); cancel() })
	return ctx, w
}

func (w *watchdog) progress() { w.timer.Reset(w.d) }
func (w *watchdog) pause()    { w.timer.Stop() }
func (w *watchdog) stop() bool {
	w.timer.Stop()
	w.cancel()
	return w.fired.Load()
}

// withProgress moves w on every read the storage makes of an upload. A
// reader that can be read at offsets stays one: minio-go then uploads
// parts without holding them in memory.
func withProgress(r io.Reader, w *watchdog) io.Reader {
	if ra, ok := r.(io.ReaderAt); ok {
		return progressReaderAt{progressReader{r, w}, ra}
	}
	return progressReader{r, w}
}

type progressReader struct {
	r io.Reader
	w *watchdog
}

func (p progressReader) Read(b []byte) (int, error) {
	p.w.progress()
	return p.r.Read(b)
}

type progressReaderAt struct {
	progressReader
	ra io.ReaderAt
}

func (p progressReaderAt) ReadAt(b []byte, off int64) (int, error) {
	p.w.progress()
	return p.ra.ReadAt(b, off)
}

// guarded runs a call whose deadline moves with its progress.
func (h *health) guarded(ctx context.Context, op string, fn func(ctx context.Context, w *watchdog) error) error {
	probe, err := h.admit()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	wctx, w := h.watch(ctx)
	err = fn(wctx, w)
	timedOut := w.stop() && ctx.Err() == nil
	h.settle(probe, timedOut)
	if timedOut {
		// Whatever fn made of it (a listing may just end): cut short.
		return fmt.Errorf("%s: %w: silent for %s", op, ErrUnavailable, h.timeout)
	}
	return err
}

// healthCollector reports whether the storage answers, and how often it
// did not in time.
type healthCollector struct {
	h            *health
	up, timeouts *prometheus.Desc
}

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up; ch <- c.timeouts }

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	up := 0.0
	if c.h.up() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.timeouts, prometheus.CounterValue, float64(c.h.timeouts.Load()))
}

// Collector reports the storage's health: depproxy_storage_up and
// depproxy_storage_timeouts_total.
func (s *S3) Collector() prometheus.Collector {
	return healthCollector{h: s.health,
		up:       prometheus.NewDesc("depproxy_storage_up", "1 while the storage answers in time; 0 while it is passed over (the cache passes through to the upstream).", nil, nil),
		timeouts: prometheus.NewDesc("depproxy_storage_timeouts_total", "Storage calls that ran out of time: each marks the storage down for a few seconds.", nil, nil),
	}
}
