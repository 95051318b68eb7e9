package verify

import (
	"fmt"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/report"
)

// The summary holds the counts of the metric and the last failures, the
// most recent first, no more than report.MaxRefusals.
func TestReport(t *testing.T) {
	v := New(nil, "", prometheus.NewRegistry(), logr.Discard())
	var sum report.Summary
	v.Report(&sum)
	if s := sum.Verification; s == nil || s.Verified+s.Refused+s.Audited != 0 || len(s.LastRefusals) != 0 {
		t.Fatalf("a new verifier: %+v", s)
	}
	v.total.WithLabelValues(verified).Add(3)
	v.total.WithLabelValues(refused).Add(12)
	v.total.WithLabelValues(audited).Inc()
	for i := range 12 {
		v.failed.add(fmt.Sprintf("r/a@sha256:%d", i), "rule 1 (r/a)", reasonNone, i == 11)
	}
	v.Report(&sum)
	s := sum.Verification
	if s.Verified != 3 || s.Refused != 12 || s.Audited != 1 || len(s.LastRefusals) != report.MaxRefusals {
		t.Fatalf("%+v", s)
	}
	if first, last := s.LastRefusals[0], s.LastRefusals[len(s.LastRefusals)-1]; first.Image != "r/a@sha256:11" || !first.Audited ||
		last.Image != "r/a@sha256:2" || last.Audited || first.At.Before(last.At) || first.Reason != reasonNone {
		t.Errorf("order: first %+v, last %+v", first, last)
	}
}
