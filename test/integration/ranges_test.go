package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/depproxy/depproxy/test/testenv"
)

// A range answered before its blob's digest is checked (from a ranged
// upstream request far ahead of the download, or from the running
// download's spool) goes out without Docker-Content-Digest or an ETag,
// and with Cache-Control: no-store: an upstream that poisons ranges
// (the front answers them with zeros) has its bytes passed on unchecked,
// as a lazy-pulling client checks chunks itself, but never labelled as
// the digest's. Once the download checked out and is stored, a range
// carries both.
func TestUnverifiedRangesCarryNoDigest(t *testing.T) {
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	repo := repoName(t)
	const size = 16 << 20
	data, d := pushBlob(t, reg.Addr, repo, size)

	// The whole-blob download sends 1 MiB, then waits for release;
	// ranged requests get zeros.
	release := make(chan struct{})
	var once sync.Once
	let := func() { once.Do(func() { close(release) }) }
	defer let()
	front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if testenv.PathKind(r.URL.Path) != "blobs" || r.Method != http.MethodGet {
			return false
		}
		if rg := r.Header.Get("Range"); rg != "" {
			var first, last int64
			if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &first, &last); err != nil {
				http.Error(w, "bad range", http.StatusBadRequest)
				return true
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, size))
			w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(make([]byte, last-first+1))
			return true
		}
		return front.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			io.CopyN(w, resp.Body, 1<<20)
			w.(http.Flusher).Flush()
			<-release
			io.Copy(w, resp.Body)
		})(w, r)
	})
	defer front.Fault(nil)
	p := startProxy(t, front.URL(), openStorage(t, "filesystem", nil))
	url := p.URL + "/v2/" + repo + "/blobs/" + d.String()

	ranged := func(first, last int) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("bytes=%d-%d: %s %s", first, last, resp.Status, body)
		}
		return resp, body
	}
	unlabelled := func(what string, resp *http.Response) {
		t.Helper()
		if got := resp.Header.Get("Docker-Content-Digest"); got != "" {
			t.Errorf("%s: Docker-Content-Digest %s on bytes nothing checked", what, got)
		}
		if got := resp.Header.Get("ETag"); got != "" {
			t.Errorf("%s: ETag %s on bytes nothing checked", what, got)
		}
		if got := resp.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", what, got)
		}
	}

	// The head, from the download's spool: right, but not checked yet.
	resp, body := ranged(0, 1023)
	if !bytes.Equal(body, data[:1024]) {
		t.Fatal("the head is not the blob's")
	}
	unlabelled("a range of the running download", resp)
	// Far ahead: a ranged upstream request, poisoned.
	far := 12 << 20
	resp, body = ranged(far, far+999)
	if !bytes.Equal(body, make([]byte, 1000)) {
		t.Fatal("the far range did not come from the (poisoned) ranged upstream request")
	}
	unlabelled("a poisoned cold range", resp)

	// The download goes on, checks out and is stored: a warm range is
	// the blob's, and says so.
	let()
	eventually(t, 60*time.Second, "the download stored", func() bool {
		_, err := p.Server.Storage().Stat(context.Background(), blobKey(d))
		return err == nil
	})
	resp, body = ranged(far, far+999)
	if !bytes.Equal(body, data[far:far+1000]) {
		t.Fatal("the warm range is not the blob's")
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
		t.Errorf("a warm range: Docker-Content-Digest %q, want %s", got, d)
	}
	if got := resp.Header.Get("ETag"); got != `"`+d.String()+`"` {
		t.Errorf("a warm range: ETag %q", got)
	}
	if got := resp.Header.Get("Cache-Control"); got != "" {
		t.Errorf("a warm range: Cache-Control %q", got)
	}
}
