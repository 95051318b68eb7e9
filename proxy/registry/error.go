package registry

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/routing"
	"github.com/depproxy/depproxy/proxy/share"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/proxy/upstream"
	"github.com/depproxy/depproxy/proxy/verify"
)

// regError is an OCI distribution error, as written on the wire.
// code is an OCI distribution error code: the spec's, and those
// registries send besides (DENIED, TOOMANYREQUESTS, UNAVAILABLE).
type code string

const (
	codeBlobUnknown     code = "BLOB_UNKNOWN"
	codeDenied          code = "DENIED"
	codeDigestInvalid   code = "DIGEST_INVALID"
	codeManifestInvalid code = "MANIFEST_INVALID"
	codeManifestUnknown code = "MANIFEST_UNKNOWN"
	codeNameInvalid     code = "NAME_INVALID"
	codeNameUnknown     code = "NAME_UNKNOWN"
	codeNotFound        code = "NOT_FOUND"
	codeSizeInvalid     code = "SIZE_INVALID"
	codeTooManyRequests code = "TOOMANYREQUESTS"
	codeUnauthorized    code = "UNAUTHORIZED"
	codeUnavailable     code = "UNAVAILABLE"
	codeUnknown         code = "UNKNOWN"
	codeUnsupported     code = "UNSUPPORTED"
)

type regError struct {
	Status  int
	Code    code
	Message string
	// retryAfter is passed on from an upstream 429.
	retryAfter string
	// challenge is the WWW-Authenticate header of a 401.
	challenge string
}

func (e *regError) Error() string { return string(e.Code) + ": " + e.Message }

var errUnknownRoute = &regError{Status: http.StatusNotFound, Code: codeNotFound, Message: "unknown route: depproxy serves the OCI distribution pull API under /v2/"}

// write sends the {"errors":[…]} body. HEAD gets the status alone.
func (e *regError) write(w http.ResponseWriter, r *http.Request) {
	if e.retryAfter != "" {
		w.Header().Set("Retry-After", e.retryAfter)
	}
	if e.challenge != "" {
		w.Header().Set("WWW-Authenticate", e.challenge)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return
	}
	type detail struct {
		Code    code   `json:"code"`
		Message string `json:"message"`
	}
	json.NewEncoder(w).Encode(struct {
		Errors []detail `json:"errors"`
	}{[]detail{{e.Code, e.Message}}})
}

// WriteError writes err as an OCI error, for handlers in front of the
// registry.
func WriteError(w http.ResponseWriter, r *http.Request, err error) { toRegError(err, "").write(w, r) }

// toRegError is the one place where an error becomes an OCI error code.
// notFound is the code for a 404 on this route (MANIFEST_UNKNOWN,
// BLOB_UNKNOWN, NAME_UNKNOWN).
func toRegError(err error, notFound code) *regError {
	var re *regError
	var se *upstream.StatusError
	var ch *token.Challenge
	var nm *routing.NotMirroredError
	var vr *verify.Refusal
	switch {
	case errors.As(err, &re):
		return re
	case errors.As(err, &vr):
		return &regError{Status: http.StatusForbidden, Code: codeDenied, Message: vr.Error()}
	case errors.As(err, &nm):
		return &regError{Status: http.StatusNotFound, Code: codeNameUnknown, Message: nm.Error()}
	case errors.As(err, &ch):
		return &regError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Message: ch.Reason, challenge: ch.Header}
	case errors.Is(err, peers.ErrBadSignature), errors.Is(err, share.ErrBadSignature):
		return &regError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Message: err.Error()}
	case errors.As(err, &se):
		switch se.StatusCode {
		case http.StatusNotFound:
			return &regError{Status: http.StatusNotFound, Code: notFound, Message: "not found upstream"}
		case http.StatusUnauthorized:
			return &regError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Message: "the upstream refused depproxy's credentials"}
		case http.StatusForbidden:
			return &regError{Status: http.StatusForbidden, Code: codeDenied, Message: "the upstream denied access"}
		case http.StatusTooManyRequests:
			return &regError{Status: http.StatusTooManyRequests, Code: codeTooManyRequests, Message: "the upstream is rate-limiting and nothing is cached for this request", retryAfter: se.RetryAfter}
		}
		return &regError{Status: http.StatusBadGateway, Code: codeUnavailable, Message: err.Error()}
	case errors.Is(err, manifest.ErrSchema1):
		return &regError{Status: http.StatusBadRequest, Code: codeManifestInvalid, Message: "the upstream only has a Docker schema 1 manifest, which depproxy does not serve"}
	case errors.Is(err, manifest.ErrInvalid):
		return &regError{Status: http.StatusBadGateway, Code: codeManifestInvalid, Message: err.Error()}
	case errors.Is(err, upstream.ErrTagsTooLarge):
		return &regError{Status: http.StatusBadGateway, Code: codeSizeInvalid, Message: "the upstream's tags list is larger than depproxy takes (" + err.Error() + "); ask for fewer tags with ?n="}
	case errors.Is(err, upstream.ErrReferrersTooLarge):
		return &regError{Status: http.StatusBadGateway, Code: codeSizeInvalid, Message: "the upstream's referrers index is larger than depproxy takes (" + err.Error() + ")"}
	case errors.Is(err, upstream.ErrTooLarge):
		return &regError{Status: http.StatusBadRequest, Code: codeManifestInvalid, Message: "the manifest is larger than 4 MiB, the limit for manifests"}
	case errors.Is(err, cache.ErrTooLarge):
		return &regError{Status: http.StatusBadGateway, Code: codeSizeInvalid, Message: err.Error()}
	case errors.Is(err, cache.ErrDigestMismatch):
		return &regError{Status: http.StatusBadGateway, Code: codeDigestInvalid, Message: err.Error()}
	case errors.Is(err, upstream.ErrRedirectRefused):
		return &regError{Status: http.StatusBadGateway, Code: codeUnavailable, Message: err.Error()}
	case errors.Is(err, upstream.ErrUnreachable):
		return &regError{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "the upstream is unreachable and nothing is cached for this request"}
	}
	return &regError{Status: http.StatusInternalServerError, Code: codeUnknown, Message: err.Error()}
}
