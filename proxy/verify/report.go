package verify

import (
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/depproxy/depproxy/proxy/report"
)

// What the verifier tells the operator: its counts, read from its own
// metric so that the two never disagree, and its last failures, kept in
// a ring of report.MaxRefusals.

// failures are the last failed verifications, oldest overwritten first.
type failures struct {
	mu   sync.Mutex
	ring [report.MaxRefusals]report.VerifyRefusal
	n    int // how many were ever added
}

// add records a failure: refused, or served in audit mode.
func (f *failures) add(image, rule, reason string, audited bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ring[f.n%len(f.ring)] = report.VerifyRefusal{Image: image, Rule: rule, Reason: reason, Audited: audited, At: time.Now().UTC()}
	f.n++
}

// last are the failures kept, the most recent first.
func (f *failures) last() []report.VerifyRefusal {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []report.VerifyRefusal
	for i := f.n - 1; i >= 0 && i >= f.n-len(f.ring); i-- {
		out = append(out, f.ring[i%len(f.ring)])
	}
	return out
}

// Report puts what the verifier decided since it started in sum.
func (v *Verifier) Report(sum *report.Summary) {
	sum.Verification = &report.VerifySummary{Verified: v.count(verified), Refused: v.count(refused), Audited: v.count(audited),
		LastRefusals: v.failed.last()}
}

func (v *Verifier) count(result string) int64 {
	var m dto.Metric
	if err := v.total.WithLabelValues(result).Write(&m); err != nil {
		return 0
	}
	return int64(m.GetCounter().GetValue())
}
