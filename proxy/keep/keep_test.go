package keep

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
)

// What the files say is pinned, warmed only, or neither; the access
// rules in force decide whether a pinned tag is still kept, and a
// change of them is noticed without a change of the files.
func TestPinsFollowTheFilesAndTheRules(t *testing.T) {
	dir := t.TempDir()
	pinned, warm := filepath.Join(dir, "pinned"), filepath.Join(dir, "warm")
	os.WriteFile(pinned, []byte("docker.io/library/postgres:16\nghcr.io/org/secret:1\n"), 0o644)
	os.WriteFile(warm, []byte("docker.io/library/postgres:16\ndocker.io/library/redis:7\n"), 0o644)
	var denySecret atomic.Bool
	k := New(Options{Pinned: pinned, Warm: warm, Store: storage.NewMemory(), Log: logr.Discard(), Leader: func() bool { return true },
		Denied: func(r pins.Ref) string {
			if denySecret.Load() && strings.Contains(r.Repo, "secret") {
				return "denied by the rule ghcr.io/org/secret"
			}
			return ""
		}})
	if !k.Reload() || k.Reload() {
		t.Fatal("Reload: true when the files changed, false when not")
	}
	for _, c := range []struct {
		registry, repo, tag string
		pinned              bool
	}{
		{"docker.io", "library/postgres", "16", true},
		{"docker.io", "library/redis", "7", false}, // warmed only
		{"ghcr.io", "org/secret", "1", true},
		{"ghcr.io", "org/secret", "2", false},
	} {
		if got := k.Pinned(c.registry)(c.repo, c.tag); got != c.pinned {
			t.Errorf("%s/%s:%s pinned %v, want %v", c.registry, c.repo, c.tag, got, c.pinned)
		}
	}
	var sum report.Summary
	k.Report(&sum)
	if len(sum.Kept) != 3 {
		t.Fatalf("kept %+v: want postgres once (pinned), secret, redis", sum.Kept)
	}
	if k.rulesMoved() {
		t.Error("the rules moved though nothing changed")
	}
	denySecret.Store(true)
	if k.Pinned("ghcr.io")("org/secret", "1") {
		t.Error("a tag the rules now refuse is still pinned")
	}
	if !k.rulesMoved() {
		t.Error("a rule that now refuses a kept image is not noticed")
	}
}
