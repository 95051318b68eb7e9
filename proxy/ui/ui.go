// Package ui is the cache browser: a read-only page at /ui/ on the
// registry port listing what the cache holds, for a person with a
// browser (a phone's will do). Rendered on the server with html/template;
// nothing to build, no script.
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/summary"
	"github.com/depproxy/depproxy/proxy/token"
)

// Path is where the page is served.
const Path = "/ui/"

// maxListed bounds the tags a page describes; a filter narrows the rest.
const maxListed = 200

//go:embed page.html
var pages embed.FS

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"size":  humanSize,
	"since": since,
	"short": func(d string) string {
		if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
			return hex[:12]
		}
		return d
	},
}).ParseFS(pages, "page.html"))

// Catalog is what the page lists.
type Catalog interface {
	Catalog(ctx context.Context, filter string, limit int) ([]summary.CatalogImage, int, error)
}

// Login checks a browser's HTTP Basic credentials.
type Login interface {
	CheckBasic(r *http.Request) (user string, err error)
}

// Handler serves the page.
type Handler struct {
	catalog Catalog
	login   Login
	// stats reports manifest and blob requests since start, and flush
	// writes out pending last-pull times, so the page shows the latest.
	stats func() (hits, misses int64)
	flush func(context.Context)
	log   logr.Logger
}

// New returns the cache browser.
func New(catalog Catalog, login Login, stats func() (int64, int64), flush func(context.Context), log logr.Logger) *Handler {
	return &Handler{catalog: catalog, login: login, stats: stats, flush: flush, log: log}
}

type repository struct {
	Registry, Name string
	Tags           []summary.CatalogImage
}

type view struct {
	Filter       string
	Repositories []repository
	Shown, Total int
	HitRatio     string
	Requests     int64
	User         string
	Error        string
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cache-Control", "no-store")
	if r.URL.Path != Path {
		http.Redirect(w, r, Path, http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "the cache browser is read-only", http.StatusMethodNotAllowed)
		return
	}
	user, err := h.login.CheckBasic(r)
	if err != nil {
		if errors.Is(err, token.ErrLoginThrottled) {
			hdr.Set("Retry-After", "60")
			http.Error(w, "too many failed logins; try again in a minute", http.StatusTooManyRequests)
			return
		}
		hdr.Set("WWW-Authenticate", `Basic realm="depproxy", charset="UTF-8"`)
		http.Error(w, "log in with the user and password you pull with", http.StatusUnauthorized)
		return
	}
	v := view{Filter: r.URL.Query().Get("q"), User: user}
	if h.flush != nil {
		h.flush(r.Context())
	}
	images, total, err := h.catalog.Catalog(r.Context(), v.Filter, maxListed)
	if err != nil {
		h.log.Error(err, "cache browser: listing the cache failed")
		v.Error = "the cache's storage could not be listed: " + err.Error()
	}
	v.Shown, v.Total = len(images), total
	for _, img := range images {
		n := len(v.Repositories)
		if n == 0 || v.Repositories[n-1].Registry != img.Registry || v.Repositories[n-1].Name != img.Repository {
			v.Repositories = append(v.Repositories, repository{Registry: img.Registry, Name: img.Repository})
			n++
		}
		v.Repositories[n-1].Tags = append(v.Repositories[n-1].Tags, img)
	}
	if h.stats != nil {
		hits, misses := h.stats()
		if v.Requests = hits + misses; v.Requests > 0 {
			v.HitRatio = fmt.Sprintf("%.0f%%", 100*float64(hits)/float64(v.Requests))
		}
	}
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	if err := page.Execute(w, v); err != nil {
		h.log.Error(err, "cache browser: rendering failed")
	}
}

func humanSize(n int64) string {
	if n <= 0 {
		return "—"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

func since(t time.Time) string {
	if t.IsZero() {
		return "not yet"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}
