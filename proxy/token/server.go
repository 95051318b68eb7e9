package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/audit"
)

// Server is the /token endpoint.
type Server struct {
	signer    *Signer
	users     *Users // nil: nobody logs in, everyone pulls anonymously
	throttle  *throttle
	sources   Sources
	failures  *prometheus.CounterVec
	log       logr.Logger
	anonymous bool
	audit     Auditor
}

// Auditor is the audit log, which a refused login goes to.
type Auditor interface {
	Record(r *http.Request, e audit.Entry)
	// RecordRepeated writes a refusal a client may repeat without end
	// (a throttled login): once per client per interval, counted.
	RecordRepeated(r *http.Request, e audit.Entry)
}

// ServerOption configures a Server.
type ServerOption func(*Server)

// WithMetrics registers the failure counter on r.
func WithMetrics(r prometheus.Registerer) ServerOption {
	return func(s *Server) { r.MustRegister(s.failures) }
}

// WithSources sets how a login's source is found (trusted proxies).
func WithSources(src Sources) ServerOption { return func(s *Server) { s.sources = src } }

// WithAudit records refused logins in a.
func WithAudit(a Auditor) ServerOption { return func(s *Server) { s.audit = a } }

// WithLogger sets the logger.
func WithLogger(l logr.Logger) ServerOption { return func(s *Server) { s.log = l } }

// NewServer returns the token endpoint. Without users, it hands anonymous
// pull tokens to anyone.
func NewServer(signer *Signer, users *Users, opts ...ServerOption) *Server {
	s := &Server{
		signer: signer, users: users, anonymous: users == nil, log: logr.Discard(),
		throttle: newThrottle(),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_auth_failures_total",
			Help: "Failed logins at the token endpoint, by reason: bad_credentials, throttled, bad_refresh_token.",
		}, []string{"reason"}),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

var (
	errBadCredentials = errors.New("bad credentials")
	errNoCredentials  = fmt.Errorf("%w: none given", errBadCredentials)
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
	start := time.Now()
	var subject, attempted string // attempted: the user a login names
	var scopes []string
	var err error
	offline := false
	refresh := ""
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		scopes, offline = q["scope"], q.Get("offline_token") == "true"
		user, pass, basic := r.BasicAuth()
		attempted = user
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
			attempted = r.PostForm.Get("username")
			subject, err = s.login(r, true, attempted, r.PostForm.Get("password"))
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
		s.refused(r, attempted, "login throttled", http.StatusTooManyRequests, start)
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "too many failed logins; try again in a minute")
		return
	case errors.Is(err, errNoCredentials):
		// Nothing was checked: throttling it would lock out nobody, and a
		// client may send these as fast as it likes.
		s.refused(r, "", ReasonNoCredentials, http.StatusUnauthorized, start)
		w.Header().Set("WWW-Authenticate", `Basic realm="depproxy"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication failed")
		return
	case err != nil:
		reason := "login failed"
		if refresh != "" {
			reason = "refresh token refused"
		}
		s.refused(r, attempted, reason, http.StatusUnauthorized, start)
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
	if offline && subject != Anonymous && refresh == "" {
		if resp.RefreshToken, _, err = s.signer.IssueRefresh(subject, s.users.Credential(subject)); err != nil {
			s.log.Error(err, "signing a refresh token")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(resp)
}

func (s *Server) refused(r *http.Request, user, reason string, status int, start time.Time) {
	if s.audit == nil {
		return
	}
	e := audit.Entry{Kind: "login", User: user, Answer: audit.Refused, Reason: reason, Status: status,
		DurationSeconds: time.Since(start).Seconds()}
	if status == http.StatusTooManyRequests || reason == ReasonNoCredentials {
		// Nothing was checked, and a client may send these as fast as
		// it likes: a line per client per interval, with a count.
		s.audit.RecordRepeated(r, e)
		return
	}
	s.audit.Record(r, e)
}

// ReasonNoCredentials is a refused login's reason when it gave no user
// and password.
const ReasonNoCredentials = "no credentials"

// ErrLoginThrottled is a login refused for too many failures, before its
// password was checked.
var ErrLoginThrottled = errThrottled

// CheckBasic checks a request's HTTP Basic credentials as /token checks
// them (the same users, the same limits on guessing): for pages a
// browser logs in to. It returns the user, "anonymous" where pulls are.
func (s *Server) CheckBasic(r *http.Request) (string, error) {
	user, pass, basic := r.BasicAuth()
	return s.login(r, basic, user, pass)
}

// login checks credentials, or allows anonymous pulls where they are.
func (s *Server) login(r *http.Request, basic bool, user, pass string) (string, error) {
	if s.anonymous {
		// An open cache: a client with stored credentials still pulls.
		return Anonymous, nil
	}
	if !basic {
		return "", errNoCredentials
	}
	source := s.sources.Of(r)
	a, ok := s.throttle.begin(user, source)
	if !ok {
		s.failures.WithLabelValues("throttled").Inc()
		// Verbose only: a client sends these as fast as it likes, and
		// the metric and the audit log count them.
		s.log.V(1).Info("login throttled", "source", source, "user", audit.CutField(user))
		return "", errThrottled
	}
	if !s.users.Check(user, pass) {
		a.failed()
		s.failures.WithLabelValues("bad_credentials").Inc()
		s.log.Info("login failed", "source", source, "user", audit.CutField(user))
		return "", errBadCredentials
	}
	a.succeeded()
	return user, nil
}

// refresh accepts a refresh token while its user still exists with the
// password it was issued for: removing a user or changing a password
// revokes the user's refresh tokens.
func (s *Server) refresh(raw string) (string, error) {
	c, err := s.signer.Verify(raw, "refresh")
	if err != nil || s.users == nil || c.Credential == "" || c.Credential != s.users.Credential(c.Subject) {
		s.failures.WithLabelValues("bad_refresh_token").Inc()
		return "", errBadCredentials
	}
	return c.Subject, nil
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}
