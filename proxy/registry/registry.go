// Package registry is the /v2 HTTP surface of the proxy: it routes pull
// requests to the cache and writes every failure as an OCI error.
// depproxy is read-only: writes are refused with UNSUPPORTED.
package registry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/routing"
	"github.com/depproxy/depproxy/proxy/verify"
)

// Cache is what the registry serves from: one upstream's cache, taking
// repository names as that upstream knows them.
type Cache interface {
	Manifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (*cache.Manifest, error)
	Blob(ctx context.Context, repo string, d digest.Digest) (*cache.Blob, error)
	StatBlob(ctx context.Context, repo string, d digest.Digest) (int64, error)
	Tags(ctx context.Context, repo string, query url.Values) ([]byte, error)
	Referrers(ctx context.Context, repo string, d digest.Digest, query url.Values) (body []byte, filtered bool, err error)
	// CountServed adds bytes sent to a client (kind: manifest or blob).
	CountServed(ctx context.Context, kind string, bytes int64)
	// CountRange records a range answered (206): from a blob being
	// downloaded (cold) or stored, and when its first byte went out.
	CountRange(ctx context.Context, cold bool, firstByte time.Duration)
	// Linked says whether a digest may be served under repo: it was
	// served for repo before, or the upstream says repo has it.
	Linked(ctx context.Context, repo string, d digest.Digest, isManifest bool) error
	// Link records a manifest served for repo, and what it references,
	// as repo's.
	Link(ctx context.Context, repo string, m *cache.Manifest)
}

// Authorizer decides whether a request may read repo ("" for /v2/), and
// who is asking ("anonymous" without a login).
type Authorizer interface {
	Authorize(r *http.Request, repo string) (user string, err error)
}

// Auditor is the audit log: what was pulled, and what was refused.
type Auditor interface {
	Record(r *http.Request, e audit.Entry)
	// RecordRepeated writes a refusal a client may repeat without end at
	// most once per client and interval, with a count.
	RecordRepeated(r *http.Request, e audit.Entry)
	// Blobs: blob requests are logged too.
	Blobs() bool
}

// Origins says which registry's manifest named a blob ("" when none
// did): where a blob asked for without a registry goes.
type Origins interface {
	Origin(ctx context.Context, d digest.Digest) string
}

// Access decides what may be pulled: why a repository (a tag of it, when
// tag is set) of a registry known by names may not, or "".
type Access interface {
	Denied(names []string, repo, tag string) string
	// Enforced: some rule is in force, so content is bound to the
	// repositories it was served for (the storage shares it by digest).
	Enforced() bool
}

// Verifier checks a manifest's signatures before it is served: nil, or
// why it may not be (a *verify.Refusal). Signatures are read from src.
type Verifier interface {
	Check(ctx context.Context, src verify.Source, names []string, repo string, d digest.Digest, mediaType string, body []byte) error
	// Verdict is the verdict Check reached, for the audit log: "" when
	// no rule applies.
	Verdict(names []string, repo string, d digest.Digest) string
}

// Sharer may send a node agent's blob request to another node of its
// zone that holds the blob: then it answers the request itself (a
// redirect) and says so; else the blob is served here. Asked only once
// the request may have the blob.
type Sharer interface {
	Share(w http.ResponseWriter, r *http.Request, d digest.Digest) (answered bool, err error)
	// Received is told the size a HEAD that Share let through was
	// answered with: a node's report that it has the blob whole.
	Received(r *http.Request, size int64)
}

// Options are what a Registry checks and records besides serving; each
// may be nil.
type Options struct {
	// Auth decides who may pull; nil lets everyone.
	Auth Authorizer
	// Audit logs what was pulled and refused; nil logs nothing.
	Audit Auditor
	// Origins routes blobs that name no registry; nil sends them to the
	// default.
	Origins Origins
	// Access refuses what may not be pulled, before anything is read or
	// fetched; OnDenied is told of each refusal, by registry.
	Access   Access
	OnDenied func(registry string)
	// Share sends nodes to each other for blobs; nil: the cache serves
	// every blob itself.
	Share Sharer
	// Verify checks signatures of manifests before they are served;
	// nil serves them unchecked.
	Verify Verifier
}

// Registry serves the OCI distribution pull API.
type Registry struct {
	routes   routing.Table // an upstream for each source, the first the default
	caches   []Cache       // the cache of each upstream of routes
	auth     Authorizer
	audit    Auditor
	origins  Origins
	access   Access
	onDenied func(registry string)
	share    Sharer
	verify   Verifier
	log      logr.Logger
}

// New returns the /v2 handler for caches, each the cache of the upstream
// of the same index in routes, the first being the default for requests
// that name no registry.
func New(routes routing.Table, caches []Cache, o Options, log logr.Logger) *Registry {
	r := &Registry{routes: routes, caches: caches, auth: o.Auth, audit: o.Audit, origins: o.Origins, access: o.Access, onDenied: o.OnDenied, share: o.Share, verify: o.Verify, log: log}
	if r.onDenied == nil {
		r.onDenied = func(string) {}
	}
	return r
}

// pick routes a request (routing.Table.Route: ?ns=, the path form, the
// default), and says why the access rules refuse it there ("" when they
// do not), asking them once per registry. A blob that names no registry
// goes, with several upstreams, where its manifest came from: SOCI, and
// the stargz snapshotter before 2026-08, send ?ns= with manifests but
// not with blobs. Unless every registry refuses its name: then where it
// came from is not read from storage, the default's refusal answers.
func (reg *Registry) pick(r *http.Request, rt route) (routing.Route, string, *regError) {
	to, err := reg.routes.Route(r.URL.Query().Get("ns"), rt.name)
	if err != nil {
		return routing.Route{}, "", toRegError(err, "")
	}
	if to.Named != "" || rt.kind != kindBlob || reg.origins == nil || len(reg.caches) < 2 {
		return to, reg.refusal(to, rt.ref.Tag()), nil
	}
	why := map[int]string{}
	for i := range reg.routes {
		if why[i] = reg.refusal(reg.upstreamRoute(i, rt.name), ""); why[i] != "" {
			continue
		}
		if o, ok := reg.routes.Serving(reg.origins.Origin(r.Context(), rt.digest)); ok {
			to = reg.upstreamRoute(o, rt.name)
		}
		if _, asked := why[to.Upstream]; !asked {
			why[to.Upstream] = reg.refusal(to, "")
		}
		break
	}
	return to, why[to.Upstream], nil
}

// upstreamRoute is name at upstream i, as a name without a registry
// goes there.
func (reg *Registry) upstreamRoute(i int, name string) routing.Route {
	return routing.Route{Upstream: i, Repository: reg.routes[i].Repository(name)}
}

// refusal says why the access rules refuse a route (a tag of it, when
// tag is set), or "".
func (reg *Registry) refusal(to routing.Route, tag string) string {
	if reg.access == nil {
		return ""
	}
	return reg.access.Denied(reg.routes.Names(to), to.Repository, tag)
}

func (reg *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	// Nothing served here is a page: a browser must not guess otherwise.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if reg.audit == nil {
		reg.serve(w, r, &audit.Entry{})
		return
	}
	reg.serveAudited(w, r)
}

// serve answers one request, noting in e what the audit log says of it.
func (reg *Registry) serve(w http.ResponseWriter, r *http.Request, e *audit.Entry) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		(&regError{Status: http.StatusMethodNotAllowed, Code: codeUnsupported,
			Message: "depproxy is a read-only pull-through cache; push to the upstream registry"}).write(w, r)
		return
	}
	rt, rerr := parseRoute(r.URL.Path)
	if rerr != nil {
		rerr.write(w, r)
		return
	}
	e.Kind, e.Repository, e.Tag, e.Digest = rt.kind.String(), rt.name, rt.ref.Tag(), rt.digest.String()
	if d, ok := rt.ref.Digest(); ok {
		e.Digest = d.String()
	}
	var c Cache
	var names []string // what the chosen upstream is known by
	var refused string // why the access rules refuse it
	if rt.kind != kindBase {
		to, why, perr := reg.pick(r, rt)
		if perr != nil {
			e.Answer, e.Reason = audit.Failed, string(perr.Code)
			perr.write(w, r)
			return
		}
		c, rt.repo, e.Registry, e.Repository = reg.caches[to.Upstream], to.Repository, reg.routes[to.Upstream].Registry, to.Repository
		names = reg.routes.Names(to)
		refused = why
	}
	if reg.auth != nil {
		// Tokens are scoped to the name the client asked for.
		user, err := reg.auth.Authorize(r, rt.name)
		e.User = user
		if err != nil {
			re := toRegError(err, "")
			e.Answer, e.Reason = audit.Refused, refusal(err, re)
			re.write(w, r)
			return
		}
	}
	if refused != "" {
		// Cached or not: nothing is read, nothing is fetched.
		e.Answer, e.Reason = audit.Refused, refused
		reg.onDenied(e.Registry)
		(&regError{Status: http.StatusForbidden, Code: codeDenied, Message: e.Registry + "/" + rt.repo + ": " + refused}).write(w, r)
		return
	}
	rt.bound = reg.access != nil && reg.access.Enforced()
	var err error
	switch rt.kind {
	case kindBase:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	case kindManifest:
		err = reg.manifest(w, r, c, rt, names, e)
	case kindBlob:
		err = reg.blob(w, r, c, rt)
	case kindTags:
		err = reg.tags(w, r, c, rt)
	case kindReferrers:
		err = reg.referrers(w, r, c, rt)
	}
	if err != nil {
		notFound := map[kind]code{kindManifest: codeManifestUnknown, kindBlob: codeBlobUnknown, kindTags: codeNameUnknown, kindReferrers: codeManifestUnknown}[rt.kind]
		re := toRegError(err, notFound)
		if re.Status >= 500 {
			reg.log.Error(err, "request failed", "method", r.Method, "path", r.URL.Path)
		}
		e.Answer, e.Reason = audit.Failed, string(re.Code)
		var vr *verify.Refusal
		if errors.As(err, &vr) {
			// Refused as the access rules refuse: by a rule, with why.
			e.Answer, e.Reason = audit.Refused, vr.Rule+": "+vr.Reason
		}
		re.write(w, r)
	}
}

func (reg *Registry) manifest(w http.ResponseWriter, r *http.Request, c Cache, rt route, names []string, e *audit.Entry) error {
	if d, ok := rt.ref.Digest(); ok && rt.bound {
		if err := c.Linked(r.Context(), rt.repo, d, true); err != nil {
			return err
		}
	}
	m, err := c.Manifest(r.Context(), rt.repo, rt.ref, r.Header.Values("Accept"))
	if err != nil {
		return err
	}
	if reg.verify != nil && !cache.IsForwarded(r.Context()) {
		// Before a byte of it is served, HEAD included: a client that
		// resolves a tag with HEAD pulls by digest next. A request
		// another replica forwarded is checked there, before it serves
		// its client: here it may be what that check reads (a
		// signature's referrers index, not an image to verify).
		err := reg.verify.Check(r.Context(), signatures{c}, names, rt.repo, m.Digest, m.MediaType, m.Body)
		var vr *verify.Refusal
		switch {
		case errors.As(err, &vr):
			e.Verification = "refused: " + vr.Reason
		case err == nil:
			e.Verification = reg.verify.Verdict(names, rt.repo, m.Digest)
		}
		if err != nil {
			return err
		}
	}
	// Linked whether rules are in force or not: a rule added later binds
	// what was cached before it.
	c.Link(r.Context(), rt.repo, m)
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("ETag", `"`+m.Digest.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	if r.Method == http.MethodHead {
		return nil
	}
	n, _ := w.Write(m.Body)
	c.CountServed(r.Context(), "manifest", int64(n))
	return nil
}

func (reg *Registry) blob(w http.ResponseWriter, r *http.Request, c Cache, rt route) error {
	began := time.Now()
	d := rt.digest
	h := w.Header()
	if rt.bound {
		if err := c.Linked(r.Context(), rt.repo, d, false); err != nil {
			return err
		}
	}
	if reg.share != nil && r.Header.Get("Range") == "" {
		// The access rules and the links were checked above, exactly as
		// for a blob served here. (A node's HEAD may report that it has
		// the blob; it is answered as any HEAD.)
		answered, err := reg.share.Share(w, r, d)
		if err != nil || answered {
			return err
		}
	}
	if r.Method == http.MethodHead {
		size, err := c.StatBlob(r.Context(), rt.repo, d)
		if err != nil {
			return err
		}
		if reg.share != nil {
			reg.share.Received(r, size)
		}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Docker-Content-Digest", d.String())
		if size >= 0 { // an upstream HEAD may not say
			h.Set("Content-Length", strconv.FormatInt(size, 10))
		}
		h.Set("Accept-Ranges", "bytes")
		return nil
	}
	b, err := c.Blob(r.Context(), rt.repo, d)
	if err != nil {
		return err
	}
	defer b.Close()
	if b.Redirect != "" {
		http.Redirect(w, r, b.Redirect, http.StatusTemporaryRedirect)
		return nil
	}
	counted := &recorder{ResponseWriter: w}
	defer func() { c.CountServed(r.Context(), "blob", counted.n) }() // an aborted response too
	w = counted
	if r.Header.Get("Range") != "" {
		// A lazy-pulling snapshotter waits on each range: how long its
		// first byte took is the number that matters.
		timed := &firstByteWriter{ResponseWriter: w}
		defer func() {
			if counted.status == http.StatusPartialContent && !timed.first.IsZero() {
				c.CountRange(r.Context(), b.Cold, timed.first.Sub(began))
			}
		}()
		w = timed
	}
	h.Set("Content-Type", "application/octet-stream")
	if b.Verified || r.Header.Get("Range") == "" {
		// A whole blob not checked yet is cut short if it turns out
		// wrong: it goes out as the digest's, and is, or fails.
		h.Set("Docker-Content-Digest", d.String())
		h.Set("ETag", `"`+d.String()+`"`)
	} else {
		// A range of bytes nothing has checked yet (a running download's,
		// or a ranged upstream request's) is complete before the digest
		// is known: it is not labelled as the digest, and is not to be
		// kept by anything between here and the client.
		h.Set("Cache-Control", "no-store")
	}
	switch {
	case b.File:
		// The file itself, not the Blob around it: sendfile then.
		http.ServeContent(w, r, "", b.ModTime, b.ReadSeeker)
	case b.Size >= 0 && conditional(r):
		// Range, If-Range and If-None-Match, on streaming blobs too.
		if end, ok := rangeEnd(r.Header.Get("Range"), b.Size); ok {
			b.Expect(end)
		}
		http.ServeContent(w, r, "", b.ModTime, b)
	default:
		// A plain GET from S3 or from a running download: 256 KiB copies
		// instead of ServeContent's 32 KiB ones halve the syscalls.
		if b.Size >= 0 {
			h.Set("Content-Length", strconv.FormatInt(b.Size, 10))
		}
		h.Set("Accept-Ranges", "bytes")
		if wt, ok := b.ReadSeeker.(io.WriterTo); ok {
			// The storage sends it itself (S3: socket to socket).
			wt.WriteTo(w)
			break
		}
		buf := copyBuffers.Get().(*[]byte)
		io.CopyBuffer(writerOnly{w}, b, *buf)
		copyBuffers.Put(buf)
	}
	if err := b.Err(); err != nil {
		// The bytes were wrong or cut: end the response without its
		// last bytes, so the client cannot take it for a whole blob.
		reg.log.Info("blob response aborted", "digest", d, "error", err.Error())
		panic(http.ErrAbortHandler)
	}
	return nil
}

// rangeEnd is where a single Range of a blob of size bytes ends
// (exclusive); !ok for several ranges, or what ServeContent will refuse.
func rangeEnd(header string, size int64) (int64, bool) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, false
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok || first == "" || last == "" { // suffix and open ranges end at the blob's end
		return size, ok
	}
	n, err := strconv.ParseInt(last, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return min(n+1, size), true
}

// conditional: the request needs ServeContent's Range or validator
// handling.
func conditional(r *http.Request) bool {
	for _, h := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		if r.Header.Get(h) != "" {
			return true
		}
	}
	return false
}

// copyBuffers bound memory: one buffer per blob being served.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// writerOnly hides the ResponseWriter's ReadFrom, which would copy in
// 32 KiB pieces and ignore the buffer.
type writerOnly struct{ io.Writer }

func (reg *Registry) tags(w http.ResponseWriter, r *http.Request, c Cache, rt route) error {
	body, err := c.Tags(r.Context(), rt.repo, r.URL.Query())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
	return nil
}

func (reg *Registry) referrers(w http.ResponseWriter, r *http.Request, c Cache, rt route) error {
	body, filtered, err := c.Referrers(r.Context(), rt.repo, rt.digest, r.URL.Query())
	if err != nil {
		return err
	}
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	w.Write(body)
	return nil
}
