package token

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// htpasswdUsers writes users with bcrypt hashes of cost (htpasswd -B
// makes cost 5) and loads them.
func htpasswdUsers(t *testing.T, cost int, users map[string]string) *Users {
	t.Helper()
	var lines []string
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), cost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u+":"+string(h))
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	u, err := LoadUsers(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func login(s *Server, user, pass, remote string, header http.Header) int {
	req := httptest.NewRequest(http.MethodGet, "/token", nil)
	req.SetBasicAuth(user, pass)
	req.RemoteAddr = remote
	for k, v := range header {
		req.Header[k] = v
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	return w.Code
}

// 200 guesses at once are not 200 checked passwords: each takes its slot
// before bcrypt runs, so at most the burst is checked.
func TestConcurrentGuessesAreThrottled(t *testing.T) {
	s := NewServer(NewSigner(newKey(t), "t", nil), htpasswdUsers(t, bcrypt.MinCost, map[string]string{"alice": "s3cret"}))
	codes := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			pass := fmt.Sprintf("guess-%d", i)
			if i == 150 {
				pass = "s3cret"
			}
			c := login(s, "alice", pass, "198.51.100.7:4000", nil)
			mu.Lock()
			codes[c]++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	checked := codes[http.StatusUnauthorized] + codes[http.StatusOK]
	if checked > failureBurst || codes[http.StatusTooManyRequests] < 200-failureBurst {
		t.Fatalf("answers %v: %d passwords were checked, the limit is %d", codes, checked, failureBurst)
	}
}

// An attacker who exhausts a user's bucket from elsewhere does not lock
// the user out of a machine it has logged in from; the attacker's own
// source stays locked.
func TestLockoutSparesTheUsersKnownSource(t *testing.T) {
	s := NewServer(NewSigner(newKey(t), "t", nil), htpasswdUsers(t, bcrypt.MinCost, map[string]string{"alice": "s3cret"}))
	if c := login(s, "alice", "s3cret", "192.0.2.1:1000", nil); c != 200 {
		t.Fatalf("alice's first login: %d", c)
	}
	for i := 0; i < 30; i++ {
		login(s, "alice", "guess", fmt.Sprintf("198.51.100.%d:2000", i%3), nil)
	}
	if c := login(s, "alice", "s3cret", "198.51.100.1:2000", nil); c != http.StatusTooManyRequests {
		t.Errorf("the right password from the attacker's source: %d, want 429", c)
	}
	if c := login(s, "alice", "s3cret", "203.0.113.50:1000", nil); c != http.StatusTooManyRequests {
		t.Errorf("a new source while alice is under attack: %d, want 429", c)
	}
	if c := login(s, "alice", "s3cret", "192.0.2.1:1000", nil); c != 200 {
		t.Errorf("alice from the machine she logged in from: %d, want 200", c)
	}
}

// Behind an ingress every login comes from the ingress: with
// --trusted-proxies the client in X-Forwarded-For is the source, and a
// client cannot choose its source by sending the header itself.
func TestTrustedProxies(t *testing.T) {
	var nets []*net.IPNet
	for _, cidr := range []string{"10.0.0.0/8", "127.0.0.1/32"} {
		_, n, _ := net.ParseCIDR(cidr)
		nets = append(nets, n)
	}
	src := TrustProxies(nets)
	s := NewServer(NewSigner(newKey(t), "t", nil), htpasswdUsers(t, bcrypt.MinCost, map[string]string{"alice": "s3cret", "bob": "pw"}),
		WithSources(src))
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }
	for i := 0; i < failureBurst+1; i++ {
		login(s, "bob", "guess", "10.1.2.3:80", xff("198.51.100.66"))
	}
	if c := login(s, "alice", "s3cret", "10.1.2.3:80", xff("203.0.113.9")); c != 200 {
		t.Errorf("another client behind the same ingress: %d, want 200", c)
	}
	if c := login(s, "alice", "s3cret", "10.1.2.3:80", xff("198.51.100.66")); c != http.StatusTooManyRequests {
		t.Errorf("the guessing client behind the ingress: %d, want 429", c)
	}
	// Not from a trusted proxy: the header is the client's own words.
	if got := src.Of(&http.Request{RemoteAddr: "198.51.100.66:1", Header: xff("203.0.113.9")}); got != "198.51.100.66" {
		t.Errorf("an untrusted peer chose its source: %s", got)
	}
	// A client prepending a forged hop gets the address the proxy saw.
	if got := src.Of(&http.Request{RemoteAddr: "10.0.0.1:1", Header: xff("203.0.113.9, 198.51.100.66")}); got != "198.51.100.66" {
		t.Errorf("forged hop: source %s, want 198.51.100.66", got)
	}
}

// Whether a user exists does not show in how long a failed login takes.
func TestUnknownUserTakesAsLong(t *testing.T) {
	u := htpasswdUsers(t, 5, map[string]string{"alice": "s3cret", "bob": "pw"})
	// What makes the time equal: the hash an unknown user is checked
	// against has the cost the users' hashes have.
	if got, _ := bcrypt.Cost(u.dummy); got != 5 {
		t.Fatalf("unknown users are checked against a hash of cost %d, the users' have 5", got)
	}
	// And the clock agrees: the fastest of interleaved tries, which load
	// on the machine only slows down.
	fastest := map[string]time.Duration{}
	for i := 0; i < 15; i++ {
		for _, user := range []string{"alice", "mallory"} {
			start := time.Now()
			u.Check(user, "wrong")
			if d := time.Since(start); fastest[user] == 0 || d < fastest[user] {
				fastest[user] = d
			}
		}
	}
	if ratio := float64(fastest["mallory"]) / float64(fastest["alice"]); ratio < 0.5 || ratio > 2 {
		t.Fatalf("a failed login takes %v for a user that exists and %v for one that does not", fastest["alice"], fastest["mallory"])
	}
}

// A refresh token dies with its user, or with the password it was
// issued for.
func TestRefreshTokenRevoked(t *testing.T) {
	signer := NewSigner(newKey(t), "t", nil)
	refresh := func(s *Server, form url.Values) (int, string) {
		req := httptest.NewRequest(http.MethodPost, "/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		var r response
		json.Unmarshal(w.Body.Bytes(), &r)
		return w.Code, r.RefreshToken
	}
	first := NewServer(signer, htpasswdUsers(t, bcrypt.MinCost, map[string]string{"alice": "s3cret", "bob": "pw"}))
	code, tok := refresh(first, url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"s3cret"},
		"access_type": {"offline"}, "client_id": {"test"}})
	if code != 200 || tok == "" {
		t.Fatalf("password grant: %d, refresh token %q", code, tok)
	}
	grant := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok}, "client_id": {"test"}}
	if code, _ := refresh(first, grant); code != 200 {
		t.Fatalf("refresh with alice still there: %d", code)
	}
	removed := NewServer(signer, htpasswdUsers(t, bcrypt.MinCost, map[string]string{"bob": "pw"}))
	if code, _ := refresh(removed, grant); code != http.StatusUnauthorized {
		t.Errorf("refresh after alice was removed: %d, want 401", code)
	}
	changed := NewServer(signer, htpasswdUsers(t, bcrypt.MinCost, map[string]string{"alice": "new-password", "bob": "pw"}))
	if code, _ := refresh(changed, grant); code != http.StatusUnauthorized {
		t.Errorf("refresh after alice's password changed: %d, want 401", code)
	}
}
