package server_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// What a warm tag costs the handler, with the audit log off and on.
func BenchmarkWarmTag(b *testing.B) {
	for _, audited := range []bool{false, true} {
		name := map[bool]string{false: "audit-off", true: "audit-on"}[audited]
		b.Run(name, func(b *testing.B) {
			f := newFixture(b)
			s := settings.Defaults()
			s.Upstream, s.SpoolDir, s.RecheckInterval = settings.Keys(f.upstreamURL), b.TempDir(), settings.Duration(time.Hour)
			if audited {
				s.AuditLog = filepath.Join(b.TempDir(), "audit.log")
			}
			h := proxytest.Start(b, s, server.WithStorage(storage.NewMemory())).Server.Handler()
			req := httptest.NewRequest("GET", tagPath, nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			req.RemoteAddr = "192.0.2.1:1234"
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != 200 {
				b.Fatalf("warming: %d", w.Code)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					w := &discard{h: http.Header{}}
					h.ServeHTTP(w, req)
				}
			})
		})
	}
}

type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return io.Discard.Write(p) }
func (d *discard) WriteHeader(int)             {}
