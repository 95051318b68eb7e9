package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// auditLines reads an audit log, failing on a line that is not JSON.
func auditLines(t *testing.T, raw string) []audit.Entry {
	t.Helper()
	var out []audit.Entry
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		var e audit.Entry
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("an audit line is not an entry: %v\n%s", err, sc.Text())
		}
		out = append(out, e)
	}
	return out
}

// what is the part of an entry a case names.
func what(e audit.Entry) string {
	return fmt.Sprintf("%s %s %s user=%s tag=%s digest=%s %s/%s %d", e.Method, e.Kind, e.Repository, e.User, e.Tag, e.Digest, e.Answer, e.Reason, e.Status)
}

// The audit log has one line per pull and per refusal, each field right:
// by tag (the tag and the digest it served), by digest, an index and a
// child, a failed login behind a trusted proxy, a token denied another
// repository, a stale serve with the upstream down and why, a cold pull
// coalesced with another; never a password or a token.
func TestAuditLog(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	amd, arm := ociImage(t, 1), ociImage(t, 1)
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, amd, arm))
	pushImage(t, e.registry.Addr, repo, "v2", ociImage(t, 1))
	index, _ := pullAll(t, e.registry.URL(), repo, "v1")
	child, v2 := digestOf(t, amd).String(), ""

	logFile := filepath.Join(t.TempDir(), "audit.log")
	s := settings.Defaults()
	s.Upstream, s.Tenant, s.AuditLog = settings.Keys(e.front.URL()), "tenants/team-a", logFile
	s.Users, s.TrustedProxies = usersFile(t, map[string]string{"alice": "s3cret"}), "127.0.0.0/8"
	p := proxytest.Start(t, s)

	home := t.TempDir()
	crane := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(testenv.Tool(t, "crane"), args...)
		cmd.Env = append(os.Environ(), "HOME="+home, "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("crane %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	crane("auth", "login", p.Host, "-u", "alice", "-p", "s3cret")
	crane("manifest", "--insecure", p.Host+"/"+repo+":v1")     // the index, by tag: from the upstream
	crane("manifest", "--insecure", p.Host+"/"+repo+"@"+child) // a child, by digest
	crane("manifest", "--insecure", p.Host+"/"+repo+":v1")     // the tag again: cached, confirmed
	var token string
	{
		req, _ := http.NewRequest("GET", p.URL+"/token?service=tenants/team-a&scope=repository:"+repo+":pull", nil)
		req.SetBasicAuth("alice", "s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("a token: %v %v", resp, err)
		}
		var tr tokenResponse
		json.NewDecoder(resp.Body).Decode(&tr)
		resp.Body.Close()
		token = tr.Token
	}
	// A wrong password, from a client behind a trusted proxy.
	req, _ := http.NewRequest("GET", p.URL+"/token?service=tenants/team-a", nil)
	req.SetBasicAuth("alice", "not-her-password")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("a wrong password: %v %v", resp, err)
	}
	// A token for this repository only, asked for another: denied.
	denied, _ := http.NewRequest("GET", p.URL+"/v2/other/app/manifests/v1", nil)
	denied.Header.Set("Authorization", "Bearer "+token)
	if resp, err := http.DefaultClient.Do(denied); err != nil || resp.StatusCode != 401 {
		t.Fatalf("another repository's pull: %v %v", resp, err)
	}
	// The upstream down: the cached tag, stale.
	e.front.Stop()
	crane("manifest", "--insecure", p.Host+"/"+repo+":v1")
	e.front.Start()
	// Two clients at once for a tag nobody pulled: one download.
	release := make(chan struct{})
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/manifests/v2") {
			<-release
		}
		return false
	})
	var wg sync.WaitGroup
	var served [2]string
	for i := range 2 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", p.URL+"/v2/"+repo+"/manifests/v2", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Accept", acceptAll)
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Errorf("v2: %v %v", resp, err)
				return
			}
			served[i] = resp.Header.Get("Docker-Content-Digest")
			resp.Body.Close()
		})
	}
	time.Sleep(300 * time.Millisecond) // both are waiting on the one download
	close(release)
	wg.Wait()
	e.front.Fault(nil)
	if v2 = served[0]; served[1] != v2 {
		t.Fatalf("the two clients got %v", served)
	}

	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cret", "not-her-password", token, "Bearer", "Basic "} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("the audit log holds %q:\n%s", secret, raw)
		}
	}
	lines := auditLines(t, string(raw))
	got := make([]string, len(lines))
	for i, l := range lines {
		got[i] = what(l)
	}
	want := []string{
		"GET manifest " + repo + " user=alice tag=v1 digest=" + index + " miss/ 200",
		"GET manifest " + repo + " user=alice tag= digest=" + child + " miss/ 200",
		"GET manifest " + repo + " user=alice tag=v1 digest=" + index + " hit/ 200",
		"GET login  user=alice tag= digest= refused/login failed 401",
		"GET manifest other/app user=alice tag=v1 digest= refused/the token does not grant pull on other/app 401",
		"GET manifest " + repo + " user=alice tag=v1 digest=" + index + " stale/refused 200",
	}
	pair := []string{
		"GET manifest " + repo + " user=alice tag=v2 digest=" + v2 + " coalesced/ 200",
		"GET manifest " + repo + " user=alice tag=v2 digest=" + v2 + " miss/ 200",
	}
	if len(got) != len(want)+2 || !slices.Equal(got[:len(want)], want) {
		t.Fatalf("the audit log:\n%s\nwant:\n%s\n+ %s", strings.Join(got, "\n"), strings.Join(want, "\n"), strings.Join(pair, "\n"))
	}
	last := slices.Clone(got[len(want):])
	slices.Sort(last)
	if !slices.Equal(last, pair) {
		t.Fatalf("the coalesced pull: %v, want %v", last, pair)
	}
	for i, l := range lines {
		client := "127.0.0.1"
		if l.Kind == "login" {
			client = "203.0.113.7" // behind the trusted proxy
		}
		if l.Stream != audit.Stream || l.Tenant != "tenants/team-a" || l.Client != client || time.Since(l.Time) > time.Minute ||
			l.DurationSeconds <= 0 || (l.Kind == "manifest" && (l.Registry != registryname.Of(e.front.URL()) || l.Bytes <= 0)) {
			t.Errorf("line %d: %+v", i, l)
		}
	}
}

// A request one replica forwards to another is logged once, by the
// replica its client asked.
func TestAuditLogAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	rs := startReplicas(t, 3, e.front.URL(), e.minio, repoName(t), "--audit-log", "-")
	for _, r := range rs {
		resp, _ := get(t, r.URL+"/v2/"+repo+"/manifests/v1", acceptAll)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", r.URL, resp.Status)
		}
	}
	for _, r := range rs {
		eventually(t, 5*time.Second, "a replica's line", func() bool { return len(auditLines(t, r.audit.String())) >= 1 })
		lines := auditLines(t, r.audit.String())
		if len(lines) != 1 || lines[0].Tag != "v1" || lines[0].Kind != "manifest" || lines[0].Status != 200 {
			t.Errorf("replica %s logged %d lines, want its own client's one: %+v", r.URL, len(lines), lines)
		}
	}
}

// What a client without a password can make the proxy write is bounded:
// 40 refused logins naming 700 KiB users leave under 1 MiB of output in
// all (the audit log on standard output, as the operator runs it, and
// the proxy's own log), every user cut to audit.MaxField and marked, the
// throttled ones written once with their count; and a file log past
// --audit-log-max-size is rotated, FILE.1 and FILE each bounded.
func TestAuditLogIsBounded(t *testing.T) {
	users := usersFile(t, map[string]string{"alice": "s3cret"})
	login := func(t *testing.T, base, user, forwardedFor string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/token?service=depproxy", nil)
		req.SetBasicAuth(user, "guess")
		if forwardedFor != "" {
			req.Header.Set("X-Forwarded-For", forwardedFor)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	longUser := func(i int) string {
		return fmt.Sprintf("%03d", i) + strings.Repeat("u", 700<<10)
	}

	t.Run("standard output", func(t *testing.T) {
		var out syncBuffer
		proxy := proxytest.Serve{Stdout: &out, Log: &out, Args: []string{"--upstream", "http://127.0.0.1:1", "--storage", t.TempDir(),
			"--users", users, "--audit-log", "-"}}.Start(t)
		base := proxy.URL
		statuses := map[int]int{}
		for i := range 40 {
			statuses[login(t, base, longUser(i), "")]++
		}
		if statuses[401] != 10 || statuses[429] != 30 {
			t.Fatalf("the 40 logins were answered %v, want 10 401s and 30 429s", statuses)
		}
		// And 20 without credentials: nothing checked, nothing throttled.
		for range 20 {
			if resp, _ := do(t, "GET", base+"/token?service=depproxy", nil, nil); resp.StatusCode != 401 {
				t.Fatalf("a login without credentials: %s", resp.Status)
			}
		}
		if err := proxy.Terminate(t, 30*time.Second); err != nil {
			t.Fatalf("depproxy exited with %v", err)
		}
		if n := len(out.String()); n >= 1<<20 {
			t.Fatalf("40 refused logins left %d bytes of output, over 1 MiB", n)
		}
		var refusals, noCredentials, lines int
		for _, line := range strings.Split(out.String(), "\n") {
			if !strings.Contains(line, `"stream":"audit"`) {
				continue
			}
			e := auditLines(t, line)[0]
			lines++
			if e.Kind != "login" || e.Answer != audit.Refused {
				t.Errorf("a line for a refused login: %+v", e)
			}
			if e.Reason == token.ReasonNoCredentials {
				noCredentials += max(e.Count, 1)
				continue
			}
			if !strings.HasSuffix(e.User, audit.Cut) || len(e.User) > audit.MaxField+len(audit.Cut) {
				t.Errorf("a user kept as %d bytes: %.40q…", len(e.User), e.User)
			}
			refusals += max(e.Count, 1)
		}
		// Ten failures, then the first throttled one, then the other 29
		// on one line with their count; the first without credentials,
		// then the other 19 on one line.
		if refusals != 40 || noCredentials != 20 || lines != 14 {
			t.Fatalf("%d audit lines stand for %d refusals and %d without credentials, want 14 for 40 and 20:\n%s", lines, refusals, noCredentials, out.String())
		}
	})

	t.Run("rotated file", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "audit.log")
		var out syncBuffer
		proxy := proxytest.Serve{Stdout: &out, Log: &out, Args: []string{"--upstream", "http://127.0.0.1:1", "--storage", filepath.Join(dir, "data"),
			"--users", users, "--audit-log", file, "--audit-log-max-size", "4Ki", "--trusted-proxies", "127.0.0.0/8"}}.Start(t)
		base := proxy.URL
		// Each from a client of its own: a line each, about 500 bytes.
		for i := range 60 {
			login(t, base, longUser(i), fmt.Sprintf("198.51.100.%d", i))
		}
		if err := proxy.Terminate(t, 30*time.Second); err != nil {
			t.Fatalf("depproxy exited with %v", err)
		}
		var total int
		for _, f := range []string{file, file + ".1"} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(b) > 4<<10+1<<10 {
				t.Errorf("%s holds %d bytes, over --audit-log-max-size and a line", f, len(b))
			}
			total += len(auditLines(t, string(b)))
		}
		if total == 0 || total >= 60 {
			t.Errorf("FILE and FILE.1 hold %d lines: not rotated as it filled", total)
		}
		if n := len(out.String()); n >= 1<<20 {
			t.Errorf("the proxy's own log holds %d bytes", n)
		}
	})
}

// Requests without a login that the cache refuses (a made-up token on a
// cache that needs logins, a denied image on an open one) are written
// once per client and interval with their count, not a line each.
func TestAnonymousRefusalsAreCounted(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		auth string
		want int // the status of each refusal
	}{
		{"made-up token", []string{"--users", usersFile(t, map[string]string{"alice": "s3cret"})}, "Bearer made.up.token", http.StatusUnauthorized},
		{"denied image", []string{"--deny", "127.0.0.1:1/secret/**"}, "", http.StatusForbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out syncBuffer
			args := append([]string{"--upstream", "http://127.0.0.1:1", "--storage", t.TempDir(), "--audit-log", "-"}, c.args...)
			proxy := proxytest.Serve{Stdout: &out, Log: &out, Args: args}.Start(t)
			base := proxy.URL
			header := http.Header{}
			if c.auth != "" {
				header.Set("Authorization", c.auth)
			}
			for i := range 100 {
				resp, body := do(t, "GET", fmt.Sprintf("%s/v2/secret/app%d/manifests/v1", base, i), header, nil)
				if resp.StatusCode != c.want {
					t.Fatalf("request %d: %s %s", i, resp.Status, body)
				}
			}
			if err := proxy.Terminate(t, 30*time.Second); err != nil {
				t.Fatalf("depproxy exited with %v", err)
			}
			var lines, refusals int
			for _, line := range strings.Split(out.String(), "\n") {
				if !strings.Contains(line, `"stream":"audit"`) {
					continue
				}
				e := auditLines(t, line)[0]
				if e.Answer != audit.Refused {
					t.Errorf("a line that is no refusal: %+v", e)
				}
				lines++
				refusals += max(e.Count, 1)
			}
			if refusals != 100 || lines > 2 {
				t.Fatalf("%d audit lines stand for %d refusals, want at most 2 for 100:\n%s", lines, refusals, out.String())
			}
		})
	}
}

// A manifest's audit line says what the verify policy decided of it: a
// signed image "verified", an unsigned one "refused: no signature…" in
// enforce mode and "audited: no signature…" in audit mode, where it is
// served; a line for an image no rule names has no verification.
func TestAuditLogVerification(t *testing.T) {
	e := newEnv(t)
	key := newSigningKey(t)
	repo := repoName(t)
	upstreamHost := strings.TrimPrefix(e.front.URL(), "http://")
	signed, unsigned := ociImage(t, 1), ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "signed", signed)
	pushImage(t, e.registry.Addr, repo, "unsigned", unsigned)
	pushImage(t, e.registry.Addr, repo+"-free", "v1", ociImage(t, 1))
	key.sign(t, e.registry.Addr+"/"+repo+"@"+digestOf(t, signed).String(), true)

	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		mode          string
		unsignedCode  int
		unsignedEntry string
	}{
		{"enforce", http.StatusForbidden, "refused: no signature"},
		{"audit", http.StatusOK, "audited: no signature"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "cosign.pub"), read(filepath.Join(key.dir, "cosign.pub")), 0o644)
			policy := filepath.Join(dir, "verify.yaml")
			os.WriteFile(policy, fmt.Appendf(nil, "mode: %s\nrules:\n- images: [\"%s/%s\"]\n  keys: [{file: cosign.pub}]\n  ignoreTlog: true\n", c.mode, upstreamHost, repo), 0o644)
			s := settings.Defaults()
			s.Upstream, s.VerifyPolicy, s.AuditLog = settings.Keys(e.front.URL()), policy, filepath.Join(dir, "audit.log")
			p := proxytest.Start(t, s)
			for _, pull := range []struct {
				ref  string
				code int
			}{
				{repo + "/manifests/signed", http.StatusOK},
				{repo + "/manifests/signed", http.StatusOK}, // the verdict kept: said again
				{repo + "/manifests/unsigned", c.unsignedCode},
				{repo + "-free/manifests/v1", http.StatusOK},
			} {
				if resp, body := get(t, p.URL+"/v2/"+pull.ref, acceptAll); resp.StatusCode != pull.code {
					t.Fatalf("%s: %s %s, want %d", pull.ref, resp.Status, body, pull.code)
				}
			}
			p.Stop()
			var got []string
			for _, l := range auditLines(t, string(read(s.AuditLog))) {
				if l.Kind == "manifest" {
					got = append(got, l.Repository+":"+l.Tag+" "+l.Verification)
				}
			}
			want := []string{repo + ":signed verified", repo + ":signed verified", repo + ":unsigned " + c.unsignedEntry, repo + "-free:v1 "}
			if len(got) != len(want) {
				t.Fatalf("manifest lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for i := range want {
				if !strings.HasPrefix(got[i], want[i]) || (want[i] == repo+"-free:v1 " && got[i] != want[i]) {
					t.Errorf("line %d: %q, want %q…", i, got[i], want[i])
				}
			}
		})
	}
}
