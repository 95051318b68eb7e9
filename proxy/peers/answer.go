package peers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
)

// ProveAnswer wraps w so that the answer to the forwarded request f
// carries the owner's proof (AnswerHeader). A bound body is held until
// done, since its digest goes in a header; a streamed one (a blob) goes
// out as it comes. done must be called once the handler has returned.
func (s *Signer) ProveAnswer(w http.ResponseWriter, f Forward) (_ http.ResponseWriter, done func()) {
	a := &answerWriter{ResponseWriter: w, signer: s, f: f}
	return a, a.done
}

type answerWriter struct {
	http.ResponseWriter
	signer *Signer
	f      Forward
	status int // 0 until WriteHeader
	body   bytes.Buffer
}

func (a *answerWriter) WriteHeader(status int) {
	if a.status != 0 {
		return
	}
	a.status = status
	if !a.f.BindBody {
		a.signer.SignAnswer(a.f.Nonce, status, a.Header(), "")
		a.ResponseWriter.WriteHeader(status)
	}
}

func (a *answerWriter) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	if a.f.BindBody {
		return a.body.Write(b)
	}
	return a.ResponseWriter.Write(b)
}

// ReadFrom keeps the fast path (sendfile, splice) of a streamed body.
func (a *answerWriter) ReadFrom(r io.Reader) (int64, error) {
	a.WriteHeader(http.StatusOK)
	if a.f.BindBody {
		return a.body.ReadFrom(r)
	}
	if rf, ok := a.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(a.ResponseWriter, r)
}

func (a *answerWriter) Flush() {
	if a.f.BindBody || a.status == 0 {
		return
	}
	http.NewResponseController(a.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (a *answerWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

func (a *answerWriter) done() {
	if !a.f.BindBody {
		if a.status == 0 {
			a.WriteHeader(http.StatusOK)
		}
		return
	}
	if a.status == 0 {
		a.status = http.StatusOK
	}
	sum := sha256.Sum256(a.body.Bytes())
	a.signer.SignAnswer(a.f.Nonce, a.status, a.Header(), hex.EncodeToString(sum[:]))
	a.ResponseWriter.WriteHeader(a.status)
	a.ResponseWriter.Write(a.body.Bytes())
}
