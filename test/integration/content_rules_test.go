package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// Access rules bind content, not names. An image cached before its
// repository was denied is refused by digest under any other name, the
// allowed one and one that does not exist, on both backends; the cache
// browser and the summary do not show it. The allowed image, cached by
// the same earlier release-like run (no links stored), keeps pulling, and
// keeps pulling with the upstream gone, after a restart too.
func TestAccessRulesBindContent(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			store := openStorage(t, backend, e.minio)
			if backend != backends[0] {
				e.front.Start() // the first case stopped it
			}
			secret, allowed := ociImage(t, 2), ociImage(t, 1)
			pushImage(t, e.registry.Addr, "library/secret", backend, secret)
			pushImage(t, e.registry.Addr, "library/allowed", backend, allowed)
			secretDigest := digestOf(t, secret).String()
			sm, _ := secret.Manifest()
			secretLayer := sm.Layers[0].Digest.String()

			s := settings.Defaults()
			s.Upstream = settings.Keys("evil.test=" + e.front.URL())
			s.SpoolDir = t.TempDir()
			// Cached with no rule in force.
			p := proxytest.Start(t, s, server.WithStorage(store))
			pullAll(t, p.URL, "library/secret", backend)
			pullAll(t, p.URL, "library/allowed", backend)
			if err := p.Stop(); err != nil {
				t.Fatal(err)
			}

			s.Deny = settings.List{"evil.test/library/secret"}
			p = proxytest.Start(t, s, server.WithStorage(store))
			resp, body := get(t, p.URL+"/v2/library/secret/manifests/"+secretDigest, acceptAll)
			ociError(t, resp, body, http.StatusForbidden, "DENIED")
			for _, path := range []string{
				"/v2/library/allowed/manifests/" + secretDigest,
				"/v2/library/allowed/blobs/" + secretLayer,
				"/v2/no/such/blobs/" + secretLayer,
				"/v2/no/such/manifests/" + secretDigest,
			} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					req, _ := http.NewRequest(method, p.URL+path, nil)
					req.Header.Set("Accept", acceptAll)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusNotFound {
						t.Errorf("%s %s, the denied image's content under another name: %s, want 404 (the upstream has no such content there)", method, path, resp.Status)
					}
				}
			}

			// The upstream's refusal is remembered: asking again costs
			// it nothing.
			e.front.Reset()
			for range 10 {
				resp, _ := get(t, p.URL+"/v2/no/such/blobs/"+secretLayer, "")
				if resp.StatusCode != http.StatusNotFound {
					t.Fatalf("asked again: %s", resp.Status)
				}
			}
			if n := e.front.Count(http.MethodHead, "blobs") + e.front.Count(http.MethodGet, "blobs"); n > 1 {
				t.Errorf("10 requests for a digest under a name that does not have it cost the upstream %d requests", n)
			}

			// What the earlier run cached for the allowed image was
			// linked as it was served: pulled by digest first, with the
			// upstream gone, it is served.
			allowedDigest := digestOf(t, allowed).String()
			e.front.Stop()
			if got := (map[string]object{}); pullManifest(t, p.URL, "library/allowed", allowedDigest, got) == "" || len(got) < 2 {
				t.Errorf("the allowed image by digest, the upstream down: %d objects", len(got))
			}
			// A cache laid out before links existed (none stored): a
			// tag read links what it names, so it pulls with the
			// upstream gone, and after a restart.
			if err := p.Stop(); err != nil {
				t.Fatal(err)
			}
			var links []string
			store.List(context.Background(), "_links/", func(key string, _ storage.Info) error { links = append(links, key); return nil })
			for _, k := range links {
				store.Delete(context.Background(), k)
			}
			if len(links) == 0 {
				t.Error("no links were stored by the first run")
			}
			e.front.Start()
			p = proxytest.Start(t, s, server.WithStorage(store))
			_, want := pullAll(t, p.URL, "library/allowed", backend)
			e.front.Stop()
			time.Sleep(time.Second) // the links are stored in the background
			for round := 0; round < 2; round++ {
				got := map[string]object{}
				pullManifest(t, p.URL, "library/allowed", allowedDigest, got)
				if len(got) != len(want) {
					t.Errorf("round %d, the upstream stopped: pulled %d objects of %d", round, len(got), len(want))
				}
				if round == 0 {
					if err := p.Stop(); err != nil {
						t.Fatal(err)
					}
					p = proxytest.Start(t, s, server.WithStorage(store))
				}
			}

			resp, body = get(t, p.URL+"/ui/", "")
			if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "library/secret") || !strings.Contains(string(body), "library/allowed") {
				t.Errorf("the cache browser: %s, secret shown %v, allowed shown %v", resp.Status, strings.Contains(string(body), "library/secret"), strings.Contains(string(body), "library/allowed"))
			}
			_, body = get(t, p.Ops+report.SummaryPath, "")
			var sum report.Summary
			if err := json.Unmarshal(body, &sum); err != nil {
				t.Fatalf("summary: %v: %s", err, body)
			}
			for _, img := range sum.Images {
				if img.Repository == "library/secret" {
					t.Errorf("the summary lists the denied repository: %+v", img)
				}
			}
		})
	}
}

// A rule written for the registry the client names holds for an upstream
// that mirrors it: ?ns=, the path form and the short name alike. A rule
// no upstream can match is refused at start.
func TestAccessRulesOverMirrorOf(t *testing.T) {
	e := newEnv(t)
	pushImage(t, e.registry.Addr, "library/secret", "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, "library/ok", "v1", ociImage(t, 1))
	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.UpstreamMirrorOf = settings.Keys("docker.io")
	s.Deny = settings.List{"docker.io/library/secret"}
	s.SpoolDir = t.TempDir()
	p := proxytest.Start(t, s)
	e.front.Reset()
	for _, path := range []string{
		"/v2/library/secret/manifests/v1?ns=docker.io",
		"/v2/secret/manifests/v1?ns=docker.io",
		"/v2/docker.io/library/secret/manifests/v1",
		"/v2/library/secret/manifests/v1",
	} {
		resp, body := get(t, p.URL+path, acceptAll)
		ociError(t, resp, body, http.StatusForbidden, "DENIED")
	}
	if n := e.front.Count(http.MethodGet, "manifests") + e.front.Count(http.MethodHead, "manifests"); n != 0 {
		t.Errorf("the upstream was asked %d times for a denied image", n)
	}
	if resp, body := get(t, p.URL+"/v2/library/ok/manifests/v1?ns=docker.io", acceptAll); resp.StatusCode != http.StatusOK {
		t.Errorf("an allowed image: %s %s", resp.Status, body)
	}

	s.Deny = settings.List{"docker.io/library/secret", "typo.example/secret"}
	err := s.Validate()
	if err == nil || !strings.Contains(err.Error(), "typo.example/secret") || !strings.Contains(err.Error(), "no upstream serves or mirrors") {
		t.Errorf("a rule for a registry no upstream serves: %v", err)
	}
}

// Warming and pinning obey the access rules: a denied image in the
// pins and warm files is neither fetched nor pinned, and the summary
// says why. (The warm file's line is a tag the upstream does not have:
// denied, it is not even asked for.)
func TestKeepingObeysAccessRules(t *testing.T) {
	e := newEnv(t)
	pushImage(t, e.registry.Addr, "library/secret", "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, "library/ok", "v1", ociImage(t, 1))
	dir := t.TempDir()
	pinned, warm := filepath.Join(dir, "pinned"), filepath.Join(dir, "warm")
	os.WriteFile(pinned, []byte("evil.test/library/secret:v1\nevil.test/library/ok:v1\n"), 0o644)
	os.WriteFile(warm, []byte("evil.test/library/secret:v2\n"), 0o644)
	s := settings.Defaults()
	s.Upstream = settings.Keys("evil.test=" + e.front.URL())
	s.Deny = settings.List{"evil.test/library/secret"}
	s.Pinned, s.Warm, s.SpoolDir = pinned, warm, t.TempDir()
	p := proxytest.Start(t, s, server.WithKeepTiming(100*time.Millisecond, time.Second))
	var sum report.Summary
	for deadline := time.Now().Add(20 * time.Second); ; sleep() {
		_, body := get(t, p.Ops+report.SummaryPath, "")
		sum = report.Summary{}
		json.Unmarshal(body, &sum)
		done := 0
		for _, k := range sum.Kept {
			if k.Warmed || k.Denied != "" {
				done++
			}
		}
		if done == 3 && len(sum.Kept) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kept images did not settle: %s", body)
		}
	}
	for _, k := range sum.Kept {
		secret := strings.Contains(k.Ref, "secret")
		if secret != (k.Denied != "") || secret == k.Warmed || (secret && k.Digest != "") {
			t.Errorf("kept %+v: want the secret image denied, unwarmed, no digest; the other warmed", k)
		}
	}
	// The upstream saw only the allowed image.
	if n := e.front.Count(http.MethodGet, "manifests"); n != 1 {
		t.Errorf("the upstream served %d manifests, want 1 (the allowed image's)", n)
	}
	// The pinned set is written after the warming it follows.
	var raw []byte
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); sleep() {
		if raw, err = storage.ReadAll(context.Background(), p.Server.Storage(), "_pins/set.json", 1<<20); err == nil {
			break
		}
	}
	if err != nil || strings.Contains(string(raw), "secret") || !strings.Contains(string(raw), "library/ok") {
		t.Errorf("the pinned set: %v %s", err, raw)
	}
}
