package keep

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/verify"
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

// At start a file that cannot be read, or a line that is not an image
// reference, is an error naming the file, its flag and the line; later
// the same mistakes are left out and the rest kept.
func TestLoadRefusesWhatReloadSkips(t *testing.T) {
	dir := t.TempDir()
	pinned := filepath.Join(dir, "pinned")
	os.WriteFile(pinned, []byte("docker.io/library/postgres:16\nnot a reference\n"), 0o644)
	for _, c := range []struct {
		name, warm string
		want       []string // in the error
	}{
		{"a bad line", "", []string{"pinned: " + pinned, "line 2", `"not a reference"`}},
		{"a missing file", filepath.Join(dir, "missing"), []string{"pinned: " + pinned, "warm: open " + filepath.Join(dir, "missing")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := New(Options{Pinned: pinned, Warm: c.warm, Store: storage.NewMemory(), Log: logr.Discard()})
			err := k.Load()
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Load: %v, want an error saying %q", err, w)
				}
			}
		})
	}
	k := New(Options{Pinned: pinned, Store: storage.NewMemory(), Log: logr.Discard()})
	if !k.Reload() || !k.Pinned("docker.io")("library/postgres", "16") {
		t.Error("Reload left out the good line with the bad one")
	}
	if k.Reload() {
		t.Error("a file read once is read as changed again")
	}
}

// refusingWarmer warms what its verdicts allow and refuses the rest as
// a verify policy in enforce mode does.
type refusingWarmer struct{ refuse map[string]string } // by tag: why

func (w refusingWarmer) Warm(_ context.Context, repo string, ref manifest.Ref, _ []v1.Platform) (cache.Warmed, error) {
	if why := w.refuse[ref.Tag()]; why != "" {
		return cache.Warmed{}, fmt.Errorf("warming %s: %w", repo, &verify.Refusal{Image: repo + ":" + ref.Tag(), Rule: "rule 1 (docker.io/**)", Reason: why})
	}
	return cache.Warmed{Digest: digest.FromString(repo + ref.Tag())}, nil
}

// An image the verify policy refuses is reported denied with the rule
// and the reason, neither warmed nor pinned, and asked again after a
// failure's backoff; the refusal is not taken for a move of the access
// rules (which would warm at every look).
func TestVerifyRefusalIsDenied(t *testing.T) {
	pinned := filepath.Join(t.TempDir(), "pinned")
	os.WriteFile(pinned, []byte("docker.io/library/signed:1\ndocker.io/library/unsigned:1\n"), 0o644)
	store := storage.NewMemory()
	k := New(Options{Pinned: pinned, Store: store, Log: logr.Discard(), Leader: func() bool { return true }})
	k.SetResolver(func(registry, repo string) (Warmer, string, string, bool) {
		return refusingWarmer{map[string]string{"1": map[string]string{"library/unsigned": "no signature"}[repo]}}, registry, repo, true
	})
	if err := k.Load(); err != nil {
		t.Fatal(err)
	}
	k.warm(t.Context())
	var sum report.Summary
	k.Report(&sum)
	for _, st := range sum.Kept {
		unsigned := strings.Contains(st.Ref, "unsigned")
		if unsigned != (st.Denied == "verify policy: rule 1 (docker.io/**): no signature") || unsigned == st.Warmed || unsigned != (st.Digest == "") || st.Error != "" {
			t.Errorf("kept %+v: want the unsigned image denied with the rule and the reason, unwarmed; the signed one warmed", st)
		}
	}
	set, err := pins.Load(t.Context(), store)
	if err != nil || len(set.Tags) != 1 || strings.Contains(set.Tags[0], "unsigned") {
		t.Errorf("pinned set %+v (%v): want the signed tag only", set, err)
	}
	if k.rulesMoved() {
		t.Error("a verify refusal is taken for a move of the access rules")
	}
	if k.due() {
		t.Error("the refused image is asked again at once")
	}
	// Within its backoff the next warm keeps it out of the set.
	k.warm(t.Context())
	if set, _ := pins.Load(t.Context(), store); len(set.Tags) != 1 {
		t.Errorf("pinned set after a second warm %+v: want the signed tag only", set)
	}
}
