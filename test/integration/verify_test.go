package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// A verify policy of cosign keys, enforced at the cache: images signed
// by cosign v3 with the policy's key, in the bundle format (A) and the
// classic one (B), pull whole with go-containerregistry's client, and A
// with containerd 2.x's CRI image service; an unsigned image (C) and one
// signed by another key (D) are refused to both with 403 DENIED naming
// the rule and the reason; an index signed at the top
// lets its children through by digest, which a cache that never served
// the index refuses. A rule without ignoreTlog refuses a signature made
// without the transparency log. In audit mode everything pulls, and the
// refusals are counted; the policy file changed to enforce is applied
// without a restart.
func TestVerifyCosignKeys(t *testing.T) {
	e := newEnv(t)
	key, other := newSigningKey(t), newSigningKey(t)
	repo, strict := repoName(t), repoName(t)+"/strict"
	upstreamHost := strings.TrimPrefix(e.front.URL(), "http://")

	digests := map[string]string{}
	for i, tag := range []string{"a", "b", "c", "d"} {
		img := ociImage(t, i+1)
		pushImage(t, e.registry.Addr, repo, tag, img)
		digests[tag] = digestOf(t, img).String()
	}
	key.sign(t, e.registry.Addr+"/"+repo+"@"+digests["a"], true)
	key.sign(t, e.registry.Addr+"/"+repo+"@"+digests["b"], false)
	other.sign(t, e.registry.Addr+"/"+repo+"@"+digests["d"], true)

	idx := ociIndex(t, ociImage(t, 1), ociImage(t, 2))
	pushIndex(t, e.registry.Addr, repo, "index", idx)
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	child := im.Manifests[0].Digest.String()
	key.sign(t, e.registry.Addr+"/"+repo+"@"+idxDigest.String(), true)
	// An index unsigned itself, one of whose images is signed.
	byChild := ociIndex(t, ociImage(t, 5), ociImage(t, 6))
	pushIndex(t, e.registry.Addr, repo, "by-child", byChild)
	bm, err := byChild.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	signedChild, unsignedChild := bm.Manifests[0].Digest.String(), bm.Manifests[1].Digest.String()
	key.sign(t, e.registry.Addr+"/"+repo+"@"+signedChild, true)

	strictImg := ociImage(t, 1)
	pushImage(t, e.registry.Addr, strict, "e", strictImg)
	key.sign(t, e.registry.Addr+"/"+strict+"@"+digestOf(t, strictImg).String(), true)

	dir := t.TempDir()
	pub, err := os.ReadFile(filepath.Join(key.dir, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cosign.pub"), pub, 0o644)
	policy := func(mode string) string {
		return fmt.Sprintf(`mode: %s
rules:
- images: ["%s/%s"]
  keys: [{file: cosign.pub}]
  ignoreTlog: true
- images: ["%s/%s"]
  keys: [{file: %s}]
`, mode, upstreamHost, repo, upstreamHost, strict, filepath.Join(dir, "cosign.pub"))
	}
	start := func(t *testing.T, mode string, store ...storage.Storage) (*proxytest.Proxy, string) {
		f, err := os.CreateTemp(dir, "verify-*.yaml") // beside cosign.pub, which it names relatively
		if err != nil {
			t.Fatal(err)
		}
		file := f.Name()
		f.Close()
		if err := os.WriteFile(file, []byte(policy(mode)), 0o644); err != nil {
			t.Fatal(err)
		}
		s := settings.Defaults()
		s.Upstream = settings.Keys(e.front.URL())
		s.VerifyPolicy = file
		s.AuditLog = file + ".audit"
		if len(store) == 0 {
			store = append(store, openStorage(t, "filesystem", nil))
		}
		return proxytest.Start(t, s, server.WithStorage(store[0])), file
	}
	pulls := func(p *proxytest.Proxy, image string) error {
		r, err := name.ParseReference(p.Host+"/"+image, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r)
		if err != nil {
			return err
		}
		return validate.Image(img)
	}
	refused := func(t *testing.T, p *proxytest.Proxy, ref, reason string) {
		t.Helper()
		resp, body := get(t, p.URL+"/v2/"+ref, acceptAll)
		ociError(t, resp, body, http.StatusForbidden, "DENIED")
		var oe struct{ Errors []struct{ Message string } }
		json.Unmarshal(body, &oe)
		if len(oe.Errors) == 0 || !strings.Contains(oe.Errors[0].Message, reason) || !strings.Contains(oe.Errors[0].Message, "rule ") {
			t.Errorf("%s: refused with %s, want the rule and %q", ref, body, reason)
		}
	}

	t.Run("enforce", func(t *testing.T) {
		p, file := start(t, "enforce")
		for _, tag := range []string{"a", "b"} {
			if err := pulls(p, repo+":"+tag); err != nil {
				t.Errorf("pulling %s, signed with the policy's key: %v", tag, err)
			}
			if err := pulls(p, repo+"@"+digests[tag]); err != nil {
				t.Errorf("pulling %s by digest: %v", tag, err)
			}
		}
		if err := pulls(p, repo+":c"); err == nil || !strings.Contains(err.Error(), "DENIED") {
			t.Errorf("pulling the unsigned image: %v, want DENIED", err)
		}
		refused(t, p, repo+"/manifests/c", "no signature")
		refused(t, p, repo+"/manifests/"+digests["c"], "no signature")
		refused(t, p, repo+"/manifests/d", "signed by another key")
		refused(t, p, strict+"/manifests/e", "no transparency-log proof")

		// The index's signature covers what it lists.
		resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/index", acceptAll)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the signed index: %s %s", resp.Status, body)
		}
		if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+child, acceptAll); resp.StatusCode != http.StatusOK {
			t.Errorf("a child of the verified index, by digest: %s %s", resp.Status, body)
		}
		// An index counts as verified when the image asked for is
		// signed: served, the signed image by digest too, not the other.
		if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/by-child", acceptAll); resp.StatusCode != http.StatusOK {
			t.Errorf("an index whose image is signed: %s %s", resp.Status, body)
		}
		if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+signedChild, acceptAll); resp.StatusCode != http.StatusOK {
			t.Errorf("its signed image, by digest: %s %s", resp.Status, body)
		}
		refused(t, p, repo+"/manifests/"+unsignedChild, "no signature")
		// Signature artifacts are what verifies the rest: served as they are.
		if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/sha256-"+strings.TrimPrefix(digests["b"], "sha256:")+".sig", acceptAll); resp.StatusCode != http.StatusOK {
			t.Errorf("the classic signature's manifest: %s %s", resp.Status, body)
		}
		m := scrape(t, p.Ops)
		if v := sample(m, "depproxy_proxy_verify_total", "result", "verified"); v != 4 {
			t.Errorf("depproxy_proxy_verify_total{result=verified} = %v, want 4 (a, b, the two indexes; each once)", v)
		}
		if v := sample(m, "depproxy_proxy_verify_total", "result", "refused"); v != 4 {
			t.Errorf("depproxy_proxy_verify_total{result=refused} = %v, want 4 (c, d, e, the unsigned image: a verdict is reused)", v)
		}
		if v := sample(m, "depproxy_proxy_verify_seconds"); v == 0 {
			t.Errorf("depproxy_proxy_verify_seconds has no observation")
		}

		// The audit log (written out at the stop) says it as it says
		// an access rule's refusal.
		p.Stop()
		audited, _ := os.ReadFile(file + ".audit")
		found := false
		for _, line := range strings.Split(string(audited), "\n") {
			var entry struct{ Answer, Reason, Tag string }
			json.Unmarshal([]byte(line), &entry)
			found = found || entry.Answer == "refused" && entry.Tag == "d" && strings.Contains(entry.Reason, "rule 1") && strings.Contains(entry.Reason, "signed by another key")
		}
		if !found {
			t.Errorf("no refusal of d in the audit log:\n%s", audited)
		}

		// Another cache that never verified the index: the child is
		// unsigned on its own.
		fresh, _ := start(t, "enforce")
		refused(t, fresh, repo+"/manifests/"+child, "no signature")
	})

	// containerd 2.x's CRI image service, as kubelet pulls, with a
	// hosts.toml that has the cache alone (plain HTTP on loopback), so
	// nothing the cache refuses is fetched from the registry itself: the
	// signed image pulls; the unsigned one and the one signed by another
	// key are refused with 403 DENIED, the rule and the reason in
	// containerd's error, and the cache counts the refusals and audits
	// them with the same.
	t.Run("containerd", func(t *testing.T) {
		p, file := start(t, "enforce")
		hostsDir := t.TempDir()
		os.MkdirAll(filepath.Join(hostsDir, upstreamHost), 0o755)
		hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", p.URL, p.URL)
		if err := os.WriteFile(filepath.Join(hostsDir, upstreamHost, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startContainerd2(t, fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = %q\n", hostsDir))

		signed := upstreamHost + "/" + repo + ":a"
		if out, err := c.Crictl(t, "pull", signed); err != nil {
			t.Fatalf("crictl pull %s, signed with the policy's key: %v\n%s", signed, err, out)
		}
		if got := c.repoDigest(t, signed); got != digests["a"] {
			t.Errorf("containerd has %s for a, the registry %s", got, digests["a"])
		}
		for tag, reason := range map[string]string{"c": "no signature", "d": "signed by another key"} {
			ref := upstreamHost + "/" + repo + ":" + tag
			out, err := c.Crictl(t, "pull", ref)
			if err == nil || !strings.Contains(out, "403") || !strings.Contains(out, "denied") || !strings.Contains(out, "rule 1") || !strings.Contains(out, reason) {
				t.Errorf("crictl pull %s: %v, want a 403 denied naming rule 1 and %q\n%s", ref, err, reason, out)
			}
		}

		m := scrape(t, p.Ops)
		if v := sample(m, "depproxy_proxy_verify_total", "result", "verified"); v != 1 {
			t.Errorf("depproxy_proxy_verify_total{result=verified} = %v, want 1 (a)", v)
		}
		if v := sample(m, "depproxy_proxy_verify_total", "result", "refused"); v != 2 {
			t.Errorf("depproxy_proxy_verify_total{result=refused} = %v, want 2 (c, d)", v)
		}
		p.Stop()
		audited, _ := os.ReadFile(file + ".audit")
		for tag, reason := range map[string]string{"c": "no signature", "d": "signed by another key"} {
			found := false
			for _, line := range strings.Split(string(audited), "\n") {
				var entry struct{ Answer, Reason, Tag string }
				json.Unmarshal([]byte(line), &entry)
				found = found || entry.Answer == "refused" && entry.Tag == tag && strings.Contains(entry.Reason, "rule 1") && strings.Contains(entry.Reason, reason)
			}
			if !found {
				t.Errorf("no refusal of %s, with rule 1 and %q, in the audit log:\n%s", tag, reason, audited)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		p, file := start(t, "audit")
		for _, tag := range []string{"a", "b", "c", "d"} {
			if err := pulls(p, repo+":"+tag); err != nil {
				t.Errorf("pulling %s in audit mode: %v", tag, err)
			}
		}
		m := scrape(t, p.Ops)
		if v := sample(m, "depproxy_proxy_verify_total", "result", "audited"); v != 2 {
			t.Errorf("depproxy_proxy_verify_total{result=audited} = %v, want 2 (c, d)", v)
		}
		if v := sample(m, "depproxy_proxy_verify_total", "result", "refused"); v != 0 {
			t.Errorf("depproxy_proxy_verify_total{result=refused} = %v in audit mode", v)
		}

		// The policy file changed: applied within its reload interval.
		if err := os.WriteFile(file, []byte(policy("enforce")), 0o644); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for pulls(p, repo+":c") == nil {
			if time.Now().After(deadline) {
				t.Fatal("the policy changed to enforce was not applied within 15s")
			}
			time.Sleep(200 * time.Millisecond)
		}
		refused(t, p, repo+"/manifests/c", "no signature")
		if err := pulls(p, repo+":a"); err != nil {
			t.Errorf("pulling a after the change to enforce: %v", err)
		}
	})

	// The signatures are cached with what they sign: a new process with
	// the upstream down verifies from them. What was cached without its
	// signatures is refused, never served unverified.
	t.Run("upstream down", func(t *testing.T) {
		store := openStorage(t, "filesystem", nil)
		first, _ := start(t, "enforce", store)
		if err := pulls(first, repo+"@"+digests["a"]); err != nil {
			t.Fatalf("pulling a: %v", err)
		}
		unchecked := startProxy(t, e.front.URL(), store) // no policy: b's manifest cached, not its signatures
		if resp, body := get(t, unchecked.URL+"/v2/"+repo+"/manifests/"+digests["b"], acceptAll); resp.StatusCode != http.StatusOK {
			t.Fatalf("caching b: %s %s", resp.Status, body)
		}
		first.Stop()
		unchecked.Stop()
		e.front.Stop()
		defer e.front.Start()

		p, _ := start(t, "enforce", store)
		if err := pulls(p, repo+"@"+digests["a"]); err != nil {
			t.Errorf("pulling a, verified from cached signatures: %v", err)
		}
		refused(t, p, repo+"/manifests/"+digests["b"], "the signatures could not be read")
	})
}
