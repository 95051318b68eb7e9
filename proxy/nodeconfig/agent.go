package nodeconfig

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// Agent keeps a node's files in step with the cache: it writes them only
// once the cache answers at the address the node's runtime will use,
// takes them out while the cache stays unreachable, puts them back when
// it answers again, and takes them out for good when it stops. A runtime
// is never pointed at a cache that does not answer.
type Agent struct {
	Files []File
	// Probe is the cache's /v2/ as the node reaches it.
	Probe string
	// Unreachable is how long the cache may not answer before the files
	// come out.
	Unreachable time.Duration
	// Interval is how often the cache is asked.
	Interval time.Duration
	Log      logr.Logger
	Client   *http.Client

	configured atomic.Bool
}

// Configured reports whether the node's files are in place.
func (a *Agent) Configured() bool { return a.configured.Load() }

// Run keeps the files until ctx ends, then removes them.
func (a *Agent) Run(ctx context.Context) error {
	tick := time.NewTicker(a.Interval)
	defer tick.Stop()
	var lastAnswer time.Time
	for {
		if a.answers(ctx) {
			lastAnswer = time.Now()
			if err := a.write(); err != nil {
				a.Log.Error(err, "writing the node's files")
			} else if !a.configured.Swap(true) {
				a.Log.Info("the cache answers: node configured", "probe", a.Probe)
			}
		} else if a.configured.Load() && time.Since(lastAnswer) >= a.Unreachable {
			if err := a.remove(); err != nil {
				a.Log.Error(err, "removing the node's files")
			} else {
				a.configured.Store(false)
				a.Log.Info("the cache stopped answering: node files taken out", "probe", a.Probe, "for", a.Unreachable.String())
			}
		}
		select {
		case <-ctx.Done():
			a.configured.Store(false)
			err := a.remove()
			if err == nil {
				a.Log.Info("stopping: node files taken out, what was there before restored")
			}
			return err
		case <-tick.C:
		}
	}
}

// answers: any HTTP answer from the cache's /v2/ (200, or 401 where
// logins are on) means the runtime's requests will be served.
func (a *Agent) answers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Probe, nil)
	if err != nil {
		return false
	}
	resp, err := a.Client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
}

// write puts every file in place (an unchanged one is not touched).
func (a *Agent) write() error {
	var errs []error
	for _, f := range a.Files {
		errs = append(errs, f.Put())
	}
	return errors.Join(errs...)
}

func (a *Agent) remove() error {
	var errs []error
	for _, f := range a.Files {
		errs = append(errs, Remove(f.Path))
	}
	return errors.Join(errs...)
}
