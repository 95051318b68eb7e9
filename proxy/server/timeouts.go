package server

import (
	"io"
	"net/http"
	"time"
)

// Idle keep-alive connections are closed after idleTimeout, and every
// write of a response must finish within writeTimeout: a client that
// keeps reading gets a blob of any size however slowly, one that stops
// reading is cut, and neither holds a descriptor forever.
const (
	idleTimeout  = 2 * time.Minute
	writeTimeout = time.Minute
	// sendfileChunk is how much one deadline covers when a stored file
	// goes out with sendfile: at writeTimeout, 16 KiB/s still finishes.
	sendfileChunk = 1 << 20
)

// progressDeadlines gives each write of a response its own deadline,
// where http.Server's WriteTimeout would bound the whole response.
func progressDeadlines(next http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: timeout}, r)
	})
}

type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (d *deadlineWriter) extend() { d.rc.SetWriteDeadline(time.Now().Add(d.timeout)) }

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.ResponseWriter.Write(p)
}

func (d *deadlineWriter) WriteHeader(code int) {
	d.extend()
	d.ResponseWriter.WriteHeader(code)
}

// ReadFrom keeps sendfile for stored files (http.ServeContent hands the
// file over as an *io.LimitedReader), one deadline per chunk.
func (d *deadlineWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := d.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{d}, src)
	}
	inner, remaining := src, int64(-1)
	if lr, ok := src.(*io.LimitedReader); ok {
		inner, remaining = lr.R, lr.N
	}
	var total int64
	for remaining != 0 {
		chunk := int64(sendfileChunk)
		if remaining > 0 && remaining < chunk {
			chunk = remaining
		}
		d.extend()
		n, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: chunk})
		total += n
		if remaining > 0 {
			remaining -= n
		}
		if err != nil || n < chunk {
			return total, err
		}
	}
	return total, nil
}

// Unwrap lets http.ResponseController reach the connection.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// Flush passes a flush on.
func (d *deadlineWriter) Flush() {
	d.extend()
	d.rc.Flush()
}

type writerOnly struct{ io.Writer }
