package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/registryname"
)

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"registry-1.docker.io", "ftp://x", "", "http://"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

// recorder answers like an anonymous registry and records the hosts it
// was asked. Docker Hub itself is not reachable from tests.
type recorder struct{ hosts []string }

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.hosts = append(r.hosts, req.URL.Host)
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader("{}")), Request: req}, nil
}

// Every request to Docker Hub goes to the host the token transport
// attaches credentials for, whichever spelling of Docker Hub was given.
func TestDockerHubRequestsGoToTheTokenHost(t *testing.T) {
	for _, u := range []string{registryname.DockerHubURL, "https://docker.io", "https://index.docker.io"} {
		rec := &recorder{}
		c, err := New(u, WithTransport(rec))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.HeadManifest(context.Background(), "alpine", manifest.TagRef("3.20"), nil); err != nil {
			t.Fatal(err)
		}
		for _, h := range rec.hosts {
			if h != "index.docker.io" {
				t.Errorf("%s: a request went to %s, not index.docker.io", u, h)
			}
		}
	}
}

// A dockerconfigjson Secret: the entry for the upstream's host is used,
// Docker Hub also under the key `docker login` writes, and a missing
// entry is a clear error.
func TestFileCredentialsDockerConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(cfg string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, ".dockerconfigjson"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"auths":{"quay.io":{"username":"q","password":"qp"},"https://index.docker.io/v1/":{"auth":"aHViOmh1YnA="}}}`)
	for host, want := range map[string]string{"quay.io": "q", "index.docker.io": "hub"} {
		ac, err := FileCredentials(dir, host).Authorization()
		if err != nil || ac.Username != want {
			t.Errorf("%s: %+v %v, want user %s", host, ac, err, want)
		}
	}
	if _, err := FileCredentials(dir, "ghcr.io").Authorization(); err == nil || !strings.Contains(err.Error(), "no entry for ghcr.io") {
		t.Errorf("missing entry: %v", err)
	}
}

// Asking for ever new repository names keeps at most maxTransports
// handshakes in memory, and pings the registry once, not once a name.
func TestTransportsAreBounded(t *testing.T) {
	var pings atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			pings.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	defer front.Close()
	c, err := New(front.URL)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < maxTransports+500; i++ {
		_, err := c.HeadManifest(context.Background(), fmt.Sprintf("spray/n%d", i), manifest.TagRef("latest"), nil)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("name %d: %v, want not found", i, err)
		}
	}
	if n := c.transports.Len(); n > maxTransports {
		t.Errorf("%d transports held, the bound is %d", n, maxTransports)
	}
	if n := pings.Load(); n > 2 {
		t.Errorf("%d pings for %d names", n, maxTransports+500)
	}
}

// A .dockerconfigjson naming a credential helper for the host: the
// helper, a real one built on the helpers' library, hands out the
// credentials, and again once its answer is old, so a rotated password
// is picked up; another host gets none of them.
func TestFileCredentialsHelper(t *testing.T) {
	bin := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "docker-credential-depproxytest"), "./testdata/credhelper").CombinedOutput(); err != nil {
		t.Fatalf("building the helper: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	secret, calls := filepath.Join(t.TempDir(), "secret"), filepath.Join(t.TempDir(), "calls")
	t.Setenv("CREDHELPER_SECRET_FILE", secret)
	t.Setenv("CREDHELPER_CALLS_FILE", calls)
	t.Setenv("CREDHELPER_HOST", "quay.io")
	os.WriteFile(secret, []byte("first\n"), 0o600)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".dockerconfigjson"), []byte(`{"credHelpers":{"quay.io":"depproxytest"}}`), 0o600)

	old := helperTTL
	helperTTL = 300 * time.Millisecond
	t.Cleanup(func() { helperTTL = old })
	creds := FileCredentials(dir, "quay.io")
	ac, err := creds.Authorization()
	if err != nil || ac.Username != "helper" || ac.Password != "first" {
		t.Fatalf("from the helper: %+v, %v", ac, err)
	}
	os.WriteFile(secret, []byte("second\n"), 0o600)
	if ac, _ := creds.Authorization(); ac.Password != "first" {
		t.Fatalf("the helper's answer was not reused within its time: %+v", ac)
	}
	time.Sleep(helperTTL + 50*time.Millisecond)
	if ac, err := creds.Authorization(); err != nil || ac.Password != "second" {
		t.Fatalf("a rotated password, once the answer is old: %+v, %v", ac, err)
	}
	if _, err := FileCredentials(dir, "ghcr.io").Authorization(); err == nil || !strings.Contains(err.Error(), "no entry for ghcr.io") {
		t.Errorf("another host: %v", err)
	}
	if raw, _ := os.ReadFile(calls); strings.Contains(string(raw), "ghcr.io") {
		t.Errorf("the helper was asked for another host: %s", raw)
	}
}

// Credentials are asked for per repository, for the image as the kubelet
// names it to a plugin: the host they are sent to and the repository
// (its keyring looks up the repository to pull, without tag or digest);
// each repository's own go to it.
func TestAuthenticatorPerImage(t *testing.T) {
	up, sentTo := basicAuthUpstream(t)
	var asked []string
	c, err := New(up.URL, WithCredentials("", func(image string) authn.Authenticator {
		asked = append(asked, image)
		_, rest, _ := strings.Cut(image, "/")
		repo, _, _ := strings.Cut(rest, ":")
		repo, _, _ = strings.Cut(repo, "@")
		return authn.FromConfig(authn.AuthConfig{Username: repo, Password: "p"})
	}))
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(up.URL, "http://")
	d := digest.FromString("x")
	ctx := context.Background()
	c.GetManifest(ctx, "team/one", manifest.TagRef("v1"), nil, 1<<20)
	c.GetManifest(ctx, "team/two", manifest.DigestRef(d), nil, 1<<20)
	c.HeadBlob(ctx, "team/three", d)
	c.GetManifest(ctx, "team/one", manifest.TagRef("v2"), nil, 1<<20) // the handshake is kept
	want := []string{host + "/team/one", host + "/team/two", host + "/team/three"}
	if strings.Join(asked, " ") != strings.Join(want, " ") {
		t.Errorf("asked for %q, want %q", asked, want)
	}
	sent := sentTo()
	for path, user := range sent {
		if !strings.HasPrefix(path, "/v2/"+user+"/") {
			t.Errorf("%s was sent %s's credentials", path, user)
		}
	}
	if len(sent) != 4 {
		t.Errorf("sent: %v", sent)
	}
}

// basicAuthUpstream asks for basic auth, and answers 404 to what comes
// with it; sentTo tells the user each path was asked for as.
func basicAuthUpstream(t *testing.T) (up *httptest.Server, sentTo func() map[string]string) {
	sent := map[string]string{}
	var mu sync.Mutex
	up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _, ok := r.BasicAuth()
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		sent[r.URL.Path] = user
		mu.Unlock()
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(up.Close)
	return up, func() map[string]string {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(sent)
	}
}

// An upstream's own credentials win: with them, no plugin is asked, and
// what is sent is its own.
func TestOwnCredentialsWinOverPlugins(t *testing.T) {
	up, sentTo := basicAuthUpstream(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "username"), []byte("own"), 0o600)
	os.WriteFile(filepath.Join(dir, "password"), []byte("pw"), 0o600)
	asked := false
	c, err := New(up.URL, WithCredentials(dir, func(string) authn.Authenticator {
		asked = true
		return authn.FromConfig(authn.AuthConfig{Username: "plugin", Password: "p"})
	}))
	if err != nil {
		t.Fatal(err)
	}
	c.GetManifest(context.Background(), "team/one", manifest.TagRef("v1"), nil, 1<<20)
	if sent := sentTo(); asked || sent["/v2/team/one/manifests/v1"] != "own" {
		t.Errorf("plugin asked: %v; sent as %q, want the upstream's own", asked, sent)
	}
}
