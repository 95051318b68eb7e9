package registry

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/token"
)

func (k kind) String() string {
	switch k {
	case kindManifest:
		return "manifest"
	case kindBlob:
		return "blob"
	case kindTags:
		return "tags"
	case kindReferrers:
		return "referrers"
	}
	return ""
}

// serveAudited serves r and writes its audit line: for every manifest,
// every refused request for a repository, and every blob if asked.
func (reg *Registry) serveAudited(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var outcome cache.Outcome
	r = r.WithContext(cache.WithOutcome(r.Context(), &outcome))
	rec := &recorder{ResponseWriter: w}
	var e audit.Entry
	defer func() {
		p := recover()
		if p != nil {
			// The blob's bytes were cut short (a failed download): the
			// client got a broken response, and is told so.
			e.Answer, e.Reason = audit.Failed, "cut short"
		}
		switch {
		case !reg.audited(r, &e):
		case e.Answer == audit.Refused && (e.User == "" || e.User == token.Anonymous):
			// Whoever has no login can be refused as fast as it asks: a
			// line per client and interval, not per request.
			reg.finish(r, &e, rec, outcome, start)
			reg.audit.RecordRepeated(r, e)
		default:
			reg.finish(r, &e, rec, outcome, start)
			reg.audit.Record(r, e)
		}
		if p != nil {
			panic(p)
		}
	}()
	reg.serve(rec, r, &e)
}

// audited: whether r gets a line. A forwarded request is logged by the
// replica its client asked; a request without a token is a client's
// first step of logging in, not a refusal.
func (reg *Registry) audited(r *http.Request, e *audit.Entry) bool {
	if cache.IsForwarded(r.Context()) || e.Repository == "" {
		return false
	}
	if e.Answer == audit.Refused {
		return e.Reason != token.ReasonNoToken
	}
	return e.Kind == "manifest" || (e.Kind == "blob" && reg.audit.Blobs())
}

func (reg *Registry) finish(r *http.Request, e *audit.Entry, rec *recorder, o cache.Outcome, start time.Time) {
	e.Status, e.Bytes, e.DurationSeconds = rec.status, rec.n, time.Since(start).Seconds()
	if e.Status == 0 {
		e.Status = http.StatusOK
	}
	if d := rec.Header().Get("Docker-Content-Digest"); d != "" && e.Status < 400 {
		e.Digest = d // what was served: for a tag, where it points
	}
	if e.Answer == "" {
		e.Answer, e.Reason = o.Answer, o.Reason
	}
	if e.Answer == "" {
		e.Answer = audit.Hit // answered without the cache: a 304
	}
}

// refusal is why a request was refused, as the guard saw it (never the
// token itself), or the error's code.
func refusal(err error, re *regError) string {
	var ch *token.Challenge
	if errors.As(err, &ch) {
		return ch.Reason
	}
	return string(re.Code)
}

// recorder notes a response's status and size (for the audit log, and
// the served-bytes counter), passing ReadFrom on so that a file still
// goes out with sendfile.
type recorder struct {
	http.ResponseWriter
	status int
	n      int64
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(p []byte) (int, error) {
	n, err := r.ResponseWriter.Write(p)
	r.n += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	n, err := io.Copy(r.ResponseWriter, src)
	r.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// firstByteWriter notes when the first byte of the body was written. It
// has no ReadFrom, so that a copy writes what it has read (ReadFrom would
// be entered before the first byte is there).
type firstByteWriter struct {
	http.ResponseWriter
	first time.Time
}

func (w *firstByteWriter) Write(p []byte) (int, error) {
	if w.first.IsZero() && len(p) > 0 {
		w.first = time.Now()
	}
	return w.ResponseWriter.Write(p)
}

func (w *firstByteWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
