package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/test/testenv"
)

// The cache browser, in a real browser (headless Chromium, driven over
// the DevTools protocol) after real pulls: behind the pull logins, each
// cached tag with its digest, an index with its platform images, sizes,
// last pulled, the hit ratio, a filter that narrows the list, and a
// layout that fits a phone. The test leaves a screenshot
// (DEPPROXY_UI_SCREENSHOT names where; docs/cache-browser.png comes from it).
func TestCacheBrowser(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	idx := ociIndex(t, ociImage(t, 2), ociImage(t, 1))
	pushIndex(t, e.registry.Addr, repo, "multi", idx)
	pushImage(t, e.registry.Addr, repo, "single", ociImage(t, 3))
	idxDigest, _ := idx.Digest()
	im, _ := idx.IndexManifest()
	key, _, _ := token.NewSigningKey()
	ten := startTenant(t, "tenants/team-a", e.front.URL(), key, tenantSettings{users: map[string]string{"alice": "s3cret"}})

	home := t.TempDir()
	crane := func(args ...string) {
		t.Helper()
		cmd := exec.Command(testenv.Tool(t, "crane"), args...)
		cmd.Env = append(os.Environ(), "HOME="+home, "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("crane %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	crane("auth", "login", ten.Host, "-u", "alice", "-p", "s3cret")
	crane("pull", "--insecure", "--format", "oci", "--platform", "all", ten.Host+"/"+repo+":multi", t.TempDir())
	crane("pull", "--insecure", "--format", "oci", ten.Host+"/"+repo+":single", t.TempDir())
	crane("digest", "--insecure", ten.Host+"/"+repo+":single") // a hit

	// The page asks for the pull login, and refuses a wrong one.
	for _, auth := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wrong"))} {
		req, _ := http.NewRequest(http.MethodGet, ten.URL+"/ui/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Fatalf("the page with Authorization %q: %s, WWW-Authenticate %q", auth, resp.Status, resp.Header.Get("WWW-Authenticate"))
		}
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(testenv.Tool(t, "chromium")),
		chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	browser, cancel := chromedp.NewContext(alloc)
	defer cancel()
	// The browser lives as long as the context of its first action: no
	// timeout on that one, a timeout on the others.
	login := func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
			Headers: network.Headers{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))}})
		return chromedp.Void{}, err
	}
	if err := chromedp.Do(browser, login); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return strings.TrimSpace(v)
	}
	eval := func(expr string, into any) {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		raw, _ := json.Marshal(v)
		json.Unmarshal(raw, into)
	}

	multi := `section[data-repository="` + repo + `"] tr.tag[data-tag="multi"]`
	single := `section[data-repository="` + repo + `"] tr.tag[data-tag="single"]`
	if err := chromedp.Do(ctx, chromedp.Navigate(ten.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(multi))); err != nil {
		t.Fatalf("the page in Chromium: %v", err)
	}
	var platforms []string
	var multiDigest string
	eval(`Array.from(document.querySelectorAll('`+multi+` li.platform')).map(li => li.dataset.platform + "@" + li.dataset.digest)`, &platforms)
	eval(`document.querySelector('`+multi+`').dataset.digest`, &multiDigest)
	if count := text("#tag-count"); count != "2" {
		t.Errorf("the page counts %q cached tags, want 2", count)
	}
	if multiDigest != idxDigest.String() {
		t.Errorf("the index's row says digest %q, want %s", multiDigest, idxDigest)
	}
	var want []string
	for _, m := range im.Manifests {
		want = append(want, m.Platform.String()+"@"+m.Digest.String())
	}
	if strings.Join(platforms, " ") != strings.Join(want, " ") {
		t.Errorf("the index's platform images: %v, want %v", platforms, want)
	}
	if size := text(single + " td.size"); !regexp.MustCompile(`^\d+(\.\d)? (B|KiB|MiB)$`).MatchString(size) {
		t.Errorf("the image's size reads %q", size)
	}
	if last := text(single + " td.last-pulled"); last != "just now" {
		t.Errorf("the image was last pulled %q, want just now", last)
	}
	if ratio := text("#hit-ratio"); !regexp.MustCompile(`^\d+%$`).MatchString(ratio) || ratio == "0%" {
		t.Errorf("hit ratio %q after a warm pull", ratio)
	}
	screenshot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.TempDir(), "cache-browser.png")
	if p := os.Getenv("DEPPROXY_UI_SCREENSHOT"); p != "" {
		shot = p
	}
	if err := os.WriteFile(shot, screenshot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)

	// The filter narrows the list; a filter matching nothing says so.
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(`input[name="q"]`), ":sing"),
		chromedp.Submit(chromedp.CSS(`input[name="q"]`)),
		chromedp.WaitVisible(chromedp.CSS(single)),
	)
	if err != nil {
		t.Fatalf("filtering: %v", err)
	}
	var rows int
	eval(`document.querySelectorAll('tr.tag').length`, &rows)
	if rows != 1 {
		t.Errorf("filtering for %q left %d rows, want 1", ":sing", rows)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(ten.URL+"/ui/?q=nothing-like-this")); err != nil {
		t.Fatal(err)
	}
	if empty := text("#empty"); !strings.Contains(empty, "No cached tag matches") {
		t.Errorf("a filter matching nothing shows %q", empty)
	}

	// On a phone's width, rows stack: no table header, no sideways scroll.
	err = chromedp.Do(ctx, chromedp.EmulateViewport(390, 844), chromedp.Navigate(ten.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(multi)))
	if err != nil {
		t.Fatalf("on a phone's width: %v", err)
	}
	var theadDisplay string
	var overflow bool
	eval(`getComputedStyle(document.querySelector('thead')).display`, &theadDisplay)
	eval(`document.documentElement.scrollWidth > window.innerWidth`, &overflow)
	if theadDisplay != "none" || overflow {
		t.Errorf("on a phone: table header display %q, wider than the screen %v", theadDisplay, overflow)
	}
}
