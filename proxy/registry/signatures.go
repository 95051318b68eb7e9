package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/upstream"
	"github.com/depproxy/depproxy/proxy/verify"
)

// signatures read what verifies a manifest through the cache that serves
// it: fetched once, kept, and there when the upstream is down, as for a
// client that reads them itself.
type signatures struct{ c Cache }

var _ verify.Source = signatures{}

// Signatures reads the signatures of what c holds through c, as the
// manifest path does: for a check made outside a request (warming).
func Signatures(c Cache) verify.Source { return signatures{c} }

func notFound(err error) error {
	if errors.Is(err, upstream.ErrNotFound) {
		return fmt.Errorf("%w: %w", verify.ErrNotFound, err)
	}
	return err
}

func (s signatures) Manifest(ctx context.Context, repo string, ref manifest.Ref) ([]byte, error) {
	m, err := s.c.Manifest(ctx, repo, ref, nil)
	if err != nil {
		return nil, notFound(err)
	}
	return m.Body, nil
}

func (s signatures) Referrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	body, _, err := s.c.Referrers(ctx, repo, d, nil)
	return body, notFound(err)
}

func (s signatures) Blob(ctx context.Context, repo string, d digest.Digest, max int64) ([]byte, error) {
	b, err := s.c.Blob(ctx, repo, d)
	if err != nil {
		return nil, notFound(err)
	}
	defer b.Close()
	var r io.Reader = b
	if b.Redirect != "" {
		// Stored in S3 and handed out as a presigned URL: read it there.
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.Redirect, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("signature blob %s: the storage answered %s", d, resp.Status)
		}
		r = resp.Body
	}
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err == nil {
		err = b.Err()
	}
	switch {
	case err != nil:
		return nil, fmt.Errorf("signature blob %s: %w", d, err)
	case int64(len(body)) > max:
		return nil, fmt.Errorf("signature blob %s is larger than %d bytes", d, max)
	case d.Algorithm().FromBytes(body) != d:
		// A redirect's bytes are not checked by the cache.
		return nil, fmt.Errorf("signature blob %s: %w", d, errDigest)
	}
	return body, nil
}

var errDigest = errors.New("the bytes do not match the digest")
