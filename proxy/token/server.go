package token

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Server is the /token endpoint.
type Server struct {
	signer    *Signer
	users     *Users // nil: nobody logs in, everyone pulls anonymously
	bySource  *limiter
	byUser    *limiter
	failures  *prometheus.CounterVec
	log       logr.Logger
	anonymous bool
}

// NewServer returns the token endpoint. Without users, it hands anonymous
// pull tokens to anyone.
func NewServer(signer *Signer, users *Users, reg prometheus.Registerer, log logr.Logger) *Server {
	s := &Server{
		signer: signer, users: users, anonymous: users == nil, log: log,
		// Ten failures, then one more try a minute: slow for a guesser,
		// invisible to a person who mistyped.
		bySource: newLimiter(rate.Every(time.Minute), 10),
		byUser:   newLimiter(rate.Every(time.Minute), 10),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_auth_failures_total",
			Help: "Failed logins at the token endpoint, by reason: bad_credentials, throttled, bad_refresh_token.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(s.failures)
	}
	return s
}

var (
	errBadCredentials = errors.New("bad credentials")
	errThrottled      = errors.New("too many failed logins")
)

type response struct {
	Token        string `json:"token"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var subject string
	var scopes []string
	var err error
	offline := false
	refresh := ""
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		scopes, offline = q["scope"], q.Get("offline_token") == "true"
		user, pass, basic := r.BasicAuth()
		subject, err = s.login(r, basic, user, pass)
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "the form could not be read")
			return
		}
		scopes, offline = strings.Fields(r.PostForm.Get("scope")), r.PostForm.Get("access_type") == "offline"
		switch r.PostForm.Get("grant_type") {
		case "password":
			subject, err = s.login(r, true, r.PostForm.Get("username"), r.PostForm.Get("password"))
		case "refresh_token":
			refresh = r.PostForm.Get("refresh_token")
			subject, err = s.refresh(refresh)
		default:
			writeError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be password or refresh_token")
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "use GET or POST")
		return
	}
	switch {
	case errors.Is(err, errThrottled):
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "too many failed logins; try again in a minute")
		return
	case err != nil:
		// The same answer whether the user exists or not.
		w.Header().Set("WWW-Authenticate", `Basic realm="depproxy"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication failed")
		return
	}
	access := PullScopes(scopes)
	tok, issued, err := s.signer.Issue(subject, "access", access)
	if err != nil {
		s.log.Error(err, "signing a token")
		writeError(w, http.StatusInternalServerError, "UNKNOWN", "could not sign a token")
		return
	}
	resp := response{Token: tok, AccessToken: tok, ExpiresIn: int(s.signer.TTL().Seconds()),
		IssuedAt: issued.UTC().Format(time.RFC3339), Scope: strings.Join(scopes, " "), RefreshToken: refresh}
	if offline && subject != "anonymous" && refresh == "" {
		if resp.RefreshToken, _, err = s.signer.Issue(subject, "refresh", nil); err != nil {
			s.log.Error(err, "signing a refresh token")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(resp)
}

// login checks credentials, or allows anonymous pulls where they are.
func (s *Server) login(r *http.Request, basic bool, user, pass string) (string, error) {
	if s.anonymous {
		// An open cache: a client with stored credentials still pulls.
		return "anonymous", nil
	}
	if !basic {
		return "", errBadCredentials
	}
	source := sourceOf(r)
	if !s.bySource.allowed(source) || !s.byUser.allowed(user) {
		s.failures.WithLabelValues("throttled").Inc()
		s.log.Info("login throttled", "source", source, "user", user)
		return "", errThrottled
	}
	if !s.users.Check(user, pass) {
		s.bySource.fail(source)
		s.byUser.fail(user)
		s.failures.WithLabelValues("bad_credentials").Inc()
		s.log.Info("login failed", "source", source, "user", user)
		return "", errBadCredentials
	}
	return user, nil
}

func (s *Server) refresh(raw string) (string, error) {
	c, err := s.signer.Verify(raw, "refresh")
	if err != nil {
		s.failures.WithLabelValues("bad_refresh_token").Inc()
		return "", errBadCredentials
	}
	return c.Subject, nil
}

func sourceOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}

// limiter counts failures per key with a token bucket: a key is refused
// once its bucket is empty, until it refills.
type limiter struct {
	mu      sync.Mutex
	every   rate.Limit
	burst   int
	buckets map[string]*rate.Limiter
}

// maxLimiterKeys bounds memory under a spray of sources or user names;
// forgetting only gives the keys a fresh bucket.
const maxLimiterKeys = 100_000

func newLimiter(every rate.Limit, burst int) *limiter {
	return &limiter{every: every, burst: burst, buckets: map[string]*rate.Limiter{}}
}

func (l *limiter) bucket(key string) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxLimiterKeys {
			l.buckets = map[string]*rate.Limiter{}
		}
		b = rate.NewLimiter(l.every, l.burst)
		l.buckets[key] = b
	}
	return b
}

func (l *limiter) allowed(key string) bool { return l.bucket(key).Tokens() >= 1 }
func (l *limiter) fail(key string)         { l.bucket(key).Allow() }
