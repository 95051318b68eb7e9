package token

import (
	"fmt"
	"net/http"
	"strings"
)

// Challenge is a refused request: the registry answers 401 with Header as
// WWW-Authenticate, telling the client where to get a token.
type Challenge struct {
	Header string
	Reason string
}

func (c *Challenge) Error() string { return "authentication required: " + c.Reason }

// Guard checks the bearer token on each /v2 request.
type Guard struct {
	signer      *Signer
	anonymous   bool
	externalURL string
	service     string
}

// GuardOptions say who may pull and how clients are told to log in.
type GuardOptions struct {
	// Anonymous lets requests without a token through.
	Anonymous bool
	// ExternalURL, when set, is where clients reach the proxy (the realm
	// is under it); otherwise the request's own host is used.
	ExternalURL string
	// Service is the challenge's service: the tenant.
	Service string
}

// NewGuard returns the check for one tenant.
func NewGuard(signer *Signer, o GuardOptions) *Guard {
	return &Guard{signer: signer, anonymous: o.Anonymous, externalURL: strings.TrimRight(o.ExternalURL, "/"), service: o.Service}
}

// ReasonNoToken is a Challenge's reason for a request without a token:
// a client's first step of logging in.
const ReasonNoToken = "no bearer token"

// Authorize lets r through to repo ("" for /v2/ itself), returning the
// token's subject ("anonymous" for an open cache), or returns a
// *Challenge.
func (g *Guard) Authorize(r *http.Request, repo string) (string, error) {
	h := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		if g.anonymous {
			return Anonymous, nil // an open cache: credentials a client sends anyway are not needed
		}
		return "", g.challenge(r, repo, "", ReasonNoToken)
	}
	c, err := g.signer.Verify(strings.TrimSpace(raw), "access")
	if err != nil {
		return "", g.challenge(r, repo, "invalid_token", err.Error())
	}
	if repo != "" && !c.Allows(repo) {
		return c.Subject, g.challenge(r, repo, "insufficient_scope", "the token does not grant pull on "+repo)
	}
	return c.Subject, nil
}

func (g *Guard) challenge(r *http.Request, repo, errCode, reason string) *Challenge {
	realm := g.externalURL
	if realm == "" {
		scheme := "http"
		if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
			scheme = "https"
		}
		realm = scheme + "://" + r.Host
	}
	h := fmt.Sprintf(`Bearer realm=%q,service=%q`, realm+"/token", g.service)
	if repo != "" {
		h += fmt.Sprintf(`,scope=%q`, "repository:"+repo+":pull")
	}
	if errCode != "" {
		h += fmt.Sprintf(`,error=%q`, errCode)
	}
	return &Challenge{Header: h, Reason: reason}
}
