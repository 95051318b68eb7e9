package integration

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// tenant is a proxy with logins, as `depproxy serve --users` wires it.
type tenant struct {
	URL, Host string
	signer    *token.Signer
}

// tenantSettings are what a tenant's proxy is started with besides its
// name, upstream and key.
type tenantSettings struct {
	users         map[string]string // nil: anonymous pulls
	upstreamCreds string
}

func startTenant(t *testing.T, name, upstreamURL string, key *ecdsa.PrivateKey, ts tenantSettings) *tenant {
	t.Helper()
	dir := t.TempDir()
	der, _ := x509.MarshalECPrivateKey(key)
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	s := settings.Defaults()
	s.Upstream, s.Storage, s.Tenant, s.TokenKey = settings.Keys(upstreamURL), filepath.Join(dir, "data"), name, keyFile
	if ts.upstreamCreds != "" {
		s.UpstreamCreds = settings.Keys(ts.upstreamCreds)
	}
	if ts.users != nil {
		s.Users = usersFile(t, ts.users)
	}
	p := proxytest.Start(t, s)
	return &tenant{URL: p.URL, Host: p.Host, signer: token.NewSigner(key, name, nil)}
}

// usersFile writes an htpasswd file of users and their passwords.
func usersFile(t *testing.T, users map[string]string) string {
	t.Helper()
	var lines []string
	for u, p := range users {
		h, _ := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		lines = append(lines, u+":"+string(h))
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	return path
}

func do(t *testing.T, method, url string, header http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type tokenResponse struct {
	Token, AccessToken, RefreshToken string
	ExpiresIn                        int `json:"expires_in"`
}

func (r *tokenResponse) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	r.Token, _ = m["token"].(string)
	r.AccessToken, _ = m["access_token"].(string)
	r.RefreshToken, _ = m["refresh_token"].(string)
	n, _ := m["expires_in"].(float64)
	r.ExpiresIn = int(n)
	return nil
}

// TestLoginFlow walks the Docker token flow by hand: the challenge, a
// token from Basic credentials, its scope, and the OAuth2 refresh flow.
func TestLoginFlow(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	key, _, _ := token.NewSigningKey()
	ten := startTenant(t, "tenants/team-a", e.front.URL(), key, tenantSettings{users: map[string]string{"alice": "s3cret"}})

	resp, body := do(t, "GET", ten.URL+"/v2/", nil, nil)
	ociError(t, resp, body, 401, "UNAUTHORIZED")
	want := `Bearer realm="` + ten.URL + `/token",service="tenants/team-a"`
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Fatalf("challenge %q, want %q", got, want)
	}
	resp, body = do(t, "GET", ten.URL+"/v2/"+repo+"/manifests/v1", nil, nil)
	ociError(t, resp, body, 401, "UNAUTHORIZED")
	if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, `scope="repository:`+repo+`:pull"`) {
		t.Fatalf("challenge without the scope: %q", got)
	}

	req, _ := http.NewRequest("GET", ten.URL+"/token?service=tenants/team-a&scope=repository:"+repo+":pull", nil)
	req.SetBasicAuth("alice", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tr tokenResponse
	json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if resp.StatusCode != 200 || tr.Token == "" || tr.Token != tr.AccessToken || tr.ExpiresIn <= 0 {
		t.Fatalf("token: %s %+v", resp.Status, tr)
	}
	bearer := http.Header{"Authorization": {"Bearer " + tr.Token}, "Accept": {acceptAll}}
	if resp, body := do(t, "GET", ten.URL+"/v2/"+repo+"/manifests/v1", bearer, nil); resp.StatusCode != 200 {
		t.Fatalf("with the token: %s %s", resp.Status, body)
	}
	resp, body = do(t, "GET", ten.URL+"/v2/other/manifests/v1", bearer, nil)
	ociError(t, resp, body, 401, "UNAUTHORIZED") // the token is for one repository

	form := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"s3cret"}, "service": {"tenants/team-a"},
		"scope": {"repository:" + repo + ":pull"}, "access_type": {"offline"}, "client_id": {"test"}}
	resp, body = do(t, "POST", ten.URL+"/token", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, strings.NewReader(form.Encode()))
	json.Unmarshal(body, &tr)
	if resp.StatusCode != 200 || tr.RefreshToken == "" {
		t.Fatalf("OAuth2 password grant: %s %s", resp.Status, body)
	}
	form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tr.RefreshToken}, "service": {"tenants/team-a"},
		"scope": {"repository:" + repo + ":pull"}}
	resp, body = do(t, "POST", ten.URL+"/token", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, strings.NewReader(form.Encode()))
	var refreshed tokenResponse
	json.Unmarshal(body, &refreshed)
	if resp.StatusCode != 200 || refreshed.AccessToken == "" {
		t.Fatalf("refresh grant: %s %s", resp.Status, body)
	}
	if resp, body := do(t, "GET", ten.URL+"/v2/"+repo+"/manifests/v1", http.Header{"Authorization": {"Bearer " + refreshed.AccessToken}}, nil); resp.StatusCode != 200 {
		t.Fatalf("with the refreshed token: %s %s", resp.Status, body)
	}
	resp, body = do(t, "GET", ten.URL+"/v2/", http.Header{"Authorization": {"Bearer " + tr.RefreshToken}}, nil)
	ociError(t, resp, body, 401, "UNAUTHORIZED") // a refresh token is not a bearer token
}

// TestRealClientsLogIn: crane and skopeo log in and pull.
func TestRealClientsLogIn(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
	want, _ := pullAll(t, e.registry.URL(), repo, "v1")
	key, _, _ := token.NewSigningKey()
	ten := startTenant(t, "tenants/team-a", e.front.URL(), key, tenantSettings{users: map[string]string{"alice": "s3cret"}})
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_RUNTIME_DIR=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker")}
	runIn := func(name string, args ...string) (string, error) {
		cmd := exec.Command(testenv.Tool(t, name), args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	ref := ten.Host + "/" + repo + ":v1"
	if out, err := runIn("crane", "digest", "--insecure", ref); err == nil {
		t.Fatalf("crane pulled without logging in: %s", out)
	}
	if out, err := runIn("crane", "auth", "login", ten.Host, "-u", "alice", "-p", "s3cret"); err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}
	if out, err := runIn("crane", "digest", "--insecure", ref); err != nil || strings.TrimSpace(out) != want {
		t.Fatalf("crane digest after login: %v %s", err, out)
	}
	if out, err := runIn("crane", "pull", "--insecure", "--format", "oci", ref, t.TempDir()); err != nil {
		t.Fatalf("crane pull after login: %v\n%s", err, out)
	}
	if out, err := runIn("skopeo", "login", "--tls-verify=false", "-u", "alice", "-p", "s3cret", ten.Host); err != nil {
		t.Fatalf("skopeo login: %v\n%s", err, out)
	}
	if out, err := runIn("skopeo", "copy", "--all", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "img")+":v1"); err != nil {
		t.Fatalf("skopeo copy after login: %v\n%s", err, out)
	}
	if out, err := runIn("skopeo", "login", "--tls-verify=false", "-u", "alice", "-p", "wrong", ten.Host); err == nil {
		t.Fatalf("skopeo logged in with a wrong password: %s", out)
	}
}

// TestBadCredentialsAndTokens: each is a 401 with OCI JSON, and nothing
// is served.
func TestBadCredentialsAndTokens(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	key, _, _ := token.NewSigningKey()
	users := tenantSettings{users: map[string]string{"alice": "s3cret"}}
	a := startTenant(t, "tenants/team-a", e.front.URL(), key, users)
	b := startTenant(t, "tenants/team-b", e.front.URL(), key, users) // same key, other tenant
	scope := []token.Access{{Type: "repository", Name: repo, Actions: []string{"pull"}}}

	login := func(user, pass string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", a.URL+"/token?scope=repository:"+repo+":pull", nil)
		req.SetBasicAuth(user, pass)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	r1, wrongPassword := login("alice", "nope")
	r2, unknownUser := login("mallory", "nope")
	ociError(t, r1, wrongPassword, 401, "UNAUTHORIZED")
	ociError(t, r2, unknownUser, 401, "UNAUTHORIZED")
	if string(wrongPassword) != string(unknownUser) {
		t.Errorf("the answers tell a wrong password (%s) from an unknown user (%s)", wrongPassword, unknownUser)
	}

	otherKey, _, _ := token.NewSigningKey()
	expired, _, _ := token.NewSigner(key, "tenants/team-a", func() time.Time { return time.Now().Add(-time.Hour) }).Issue("alice", "access", scope)
	forged, _, _ := token.NewSigner(otherKey, "tenants/team-a", nil).Issue("alice", "access", scope)
	good, _, _ := a.signer.Issue("alice", "access", scope)
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."
	for name, c := range map[string]struct {
		tenant *tenant
		tok    string
	}{
		"expired": {a, expired}, "signed by another key": {a, forged}, "tampered": {a, tampered},
		"alg none": {a, none}, "tenant A's token at tenant B": {b, good},
	} {
		resp, body := do(t, "GET", c.tenant.URL+"/v2/"+repo+"/manifests/v1", http.Header{"Authorization": {"Bearer " + c.tok}}, nil)
		ociError(t, resp, body, 401, "UNAUTHORIZED")
		if strings.Contains(string(body), "schemaVersion") {
			t.Errorf("%s: a manifest was served", name)
		}
	}
	if resp, _ := do(t, "GET", a.URL+"/v2/"+repo+"/manifests/v1", http.Header{"Authorization": {"Bearer " + good}}, nil); resp.StatusCode != 200 {
		t.Fatalf("the good token was refused: %s", resp.Status)
	}
}

// TestLoginThrottling: repeated failures from one source are slowed down,
// and then even the right password waits; the metric counts them.
func TestLoginThrottling(t *testing.T) {
	key, _, _ := token.NewSigningKey()
	ten := startTenant(t, "t", "http://127.0.0.1:1", key, tenantSettings{users: map[string]string{"alice": "s3cret"}})
	status := func(pass string) int {
		req, _ := http.NewRequest("GET", ten.URL+"/token", nil)
		req.SetBasicAuth("alice", pass)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := 0; i < 10; i++ {
		if s := status("guess"); s != 401 {
			t.Fatalf("failure %d: %d, want 401", i+1, s)
		}
	}
	if s := status("guess"); s != http.StatusTooManyRequests {
		t.Fatalf("the 11th failure: %d, want 429", s)
	}
	if s := status("s3cret"); s != http.StatusTooManyRequests {
		t.Fatalf("the right password while throttled: %d, want 429", s)
	}
}

// TestPrivateUpstream: an upstream behind htpasswd serves the tenant that
// has its credentials, and not one without.
func TestPrivateUpstream(t *testing.T) {
	dir := t.TempDir()
	h, _ := bcrypt.GenerateFromPassword([]byte("up-pass"), bcrypt.MinCost)
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte("puller:"+string(h)+"\n"), 0o600)
	reg := testenv.StartRegistry(t, testenv.RegistryConfig("auth: {htpasswd: {realm: private, path: "+filepath.Join(dir, "htpasswd")+"}}"))
	repo := repoName(t)
	img := ociImage(t, 1)
	pushAuthed(t, reg.Addr, repo, "v1", img, "puller", "up-pass")

	creds := filepath.Join(dir, "creds")
	os.MkdirAll(creds, 0o755)
	os.WriteFile(filepath.Join(creds, "username"), []byte("puller"), 0o600)
	os.WriteFile(filepath.Join(creds, "password"), []byte("up-pass\n"), 0o600)
	key, _, _ := token.NewSigningKey()
	withCreds := startTenant(t, "with", reg.URL(), key, tenantSettings{upstreamCreds: creds})
	without := startTenant(t, "without", reg.URL(), key, tenantSettings{})

	if got, _ := pullAll(t, withCreds.URL, repo, "v1"); got != digestOf(t, img).String() {
		t.Fatalf("through the tenant with credentials: %s", got)
	}
	resp, body := get(t, without.URL+"/v2/"+repo+"/manifests/v1", acceptAll)
	if resp.StatusCode != 401 && resp.StatusCode != 404 {
		t.Fatalf("the tenant without credentials got %s %s", resp.Status, body)
	}
	ociError(t, resp, body, resp.StatusCode, "")

	// A rotated password takes effect without a restart.
	os.WriteFile(filepath.Join(creds, "password"), []byte("wrong\n"), 0o600)
	later := time.Now().Add(time.Second)
	os.Chtimes(filepath.Join(creds, "password"), later, later)
	pushImage0 := ociImage(t, 1)
	pushAuthed(t, reg.Addr, repo, "v2", pushImage0, "puller", "up-pass")
	resp, _ = get(t, withCreds.URL+"/v2/"+repo+"/manifests/v2", acceptAll)
	if resp.StatusCode == 200 {
		t.Fatal("a rotated (now wrong) upstream password still worked: the Secret was not re-read")
	}
}

// Refresh tokens of users from a mounted Secret (plain passwords, hashed
// at load with a fresh salt each time) work on every replica that shares
// the token key and after a restart; removing the user revokes them on
// every replica.
func TestRefreshTokensAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	os.MkdirAll(users, 0o755)
	os.WriteFile(filepath.Join(users, "alice"), []byte("s3cret\n"), 0o600)
	os.WriteFile(filepath.Join(users, "bob"), []byte("hunter2\n"), 0o600)
	_, keyPEM, _ := token.NewSigningKey()
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, keyPEM, 0o600)
	start := func() string {
		s := settings.Defaults()
		s.Upstream, s.Storage, s.Tenant, s.TokenKey, s.Users = settings.Keys(e.front.URL()), t.TempDir(), "tenants/team-a", keyFile, users
		return proxytest.Start(t, s).URL
	}
	grant := func(base string, form url.Values) (int, tokenResponse) {
		form.Set("service", "tenants/team-a")
		form.Set("scope", "repository:library/alpine:pull")
		resp, body := do(t, "POST", base+"/token", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, strings.NewReader(form.Encode()))
		var tr tokenResponse
		json.Unmarshal(body, &tr)
		return resp.StatusCode, tr
	}
	a, b := start(), start()
	status, tr := grant(a, url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"s3cret"}, "access_type": {"offline"}, "client_id": {"test"}})
	if status != 200 || tr.RefreshToken == "" {
		t.Fatalf("password grant: %d %+v", status, tr)
	}
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tr.RefreshToken}}
	for name, base := range map[string]string{"the replica that issued it": a, "another replica": b, "a restarted replica": start()} {
		if status, got := grant(base, refresh); status != 200 || got.AccessToken == "" {
			t.Errorf("refresh on %s: %d", name, status)
		}
	}
	os.Remove(filepath.Join(users, "alice"))
	for _, base := range []string{start(), start()} {
		if status, _ := grant(base, refresh); status != 401 {
			t.Errorf("a removed user's refresh token: %d, want 401", status)
		}
	}
	os.WriteFile(filepath.Join(users, "alice"), []byte("changed\n"), 0o600)
	if status, _ := grant(start(), refresh); status != 401 {
		t.Errorf("a changed password's refresh token: %d, want 401", status)
	}
}
