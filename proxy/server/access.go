package server

import (
	"bytes"
	"context"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/access"
	"github.com/depproxy/depproxy/proxy/settings"
)

// accessGate holds the access rules in force, applies a --config file's
// new ones when it changes (the operator's ConfigMap, updated by the
// kubelet: no pod rolls for a rule), and counts refusals.
type accessGate struct {
	rules  atomic.Pointer[access.Rules]
	file   string
	last   []byte
	log    logr.Logger
	metric *prometheus.CounterVec
	denied atomic.Int64
	every  time.Duration
}

func newAccessGate(rules *access.Rules, file string, r prometheus.Registerer, log logr.Logger) *accessGate {
	g := &accessGate{file: file, log: log, every: 5 * time.Second, metric: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "depproxy_proxy_denied_total",
		Help: "Requests refused by the access rules (--allow, --deny), by registry, before anything was read or fetched.",
	}, []string{"upstream"})}
	r.MustRegister(g.metric)
	g.rules.Store(rules)
	if file != "" {
		g.last, _ = os.ReadFile(file)
	}
	return g
}

// Denied implements registry.Access with the rules in force now.
func (g *accessGate) Denied(names []string, repo, tag string) string {
	return g.rules.Load().Denied(names, repo, tag)
}

// Enforced: some rule is in force, so content is served only under a
// repository it was cached for.
func (g *accessGate) Enforced() bool { return !g.rules.Load().Empty() }

func (g *accessGate) count(registry string) {
	g.metric.WithLabelValues(registry).Inc()
	g.denied.Add(1)
}

// follow re-reads the config file until ctx ends. A file that does not
// parse, or rules that do not, leave the rules in force as they are.
func (g *accessGate) follow(ctx context.Context) {
	if g.file == "" {
		return
	}
	tick := time.NewTicker(g.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		raw, err := os.ReadFile(g.file)
		if err != nil || bytes.Equal(raw, g.last) {
			continue
		}
		g.last = raw
		s, err := settings.Parse(raw)
		var rules *access.Rules
		if err == nil {
			rules, err = s.Access()
		}
		if err != nil {
			g.log.Error(err, "the config file changed and does not parse; the access rules in force stay", "file", g.file)
			continue
		}
		g.rules.Store(rules)
		g.log.Info("access rules applied from the changed config file", "allow", len(s.Allow), "deny", len(s.Deny))
	}
}
