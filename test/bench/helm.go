package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/depproxy/depproxy/test/testenv"
)

// helmPulls is how many `helm pull`s a row times.
const helmPulls = 20

// helmRows: a chart pulled warm with the real helm, `helm pull` in a
// loop, through the cache (a classic repository as OCI charts) and from
// the classic repository itself, served by a plain file server on
// loopback, the two taking turns run by run.
func (b *bench) helmRows(runs int) {
	fmt.Fprintln(os.Stderr, "helm pulls")
	dir := b.TempDir()
	repo := filepath.Join(dir, "stable")
	b.helm(dir, "create", filepath.Join(dir, "web"))
	b.helm(dir, "package", filepath.Join(dir, "web"), "--version", "1.0.0", "-d", repo)
	b.helm(dir, "repo", "index", repo)
	l, err := net.Listen("tcp", testenv.FreeAddr(b))
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.StripPrefix("/stable", http.FileServer(http.Dir(repo)))}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	b.charts = "http://" + l.Addr().String() + "/stable"

	c := b.start("depproxy fs, helm repository")
	defer c.stop()
	through := []string{"pull", "oci://" + c.addr() + "/charts.bench/web", "--version", "1.0.0", "--plain-http"}
	direct := []string{"pull", "web", "--repo", b.charts, "--version", "1.0.0"}
	b.helm(dir, append(through, "-d", b.TempDir())...) // cold: the cache fills
	var viaCache, viaRepo []time.Duration
	for r := 0; r < runs; r++ {
		viaCache = append(viaCache, b.helmLoop(dir, through))
		viaRepo = append(viaRepo, b.helmLoop(dir, direct))
	}
	cached, plain := medianDuration(viaCache), medianDuration(viaRepo)
	fmt.Println("| source | scenario | pulls/s | per pull |")
	fmt.Println("|---|---|---|---|")
	for _, r := range []struct {
		name string
		d    time.Duration
	}{{"depproxy fs, the repository as OCI charts", cached}, {"the classic repository itself", plain}} {
		fmt.Printf("| %s | helm pull of a warm chart ×%d, one after another | %.1f | %s |\n", r.name, helmPulls, float64(helmPulls)/r.d.Seconds(), (r.d / helmPulls).Round(time.Millisecond))
	}
	fmt.Printf("\nthrough the cache: %.2f× the classic repository's pulls per second\n", plain.Seconds()/cached.Seconds())
}

// helmLoop times helmPulls runs of helm with args, each into a new
// directory.
func (b *bench) helmLoop(home string, args []string) time.Duration {
	start := time.Now()
	for range helmPulls {
		b.helm(home, append(args, "-d", b.TempDir())...)
	}
	return time.Since(start)
}

// helm runs the real helm with its homes under home.
func (b *bench) helm(home string, args ...string) {
	cmd := exec.Command(testenv.Tool(b, "helm"), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("helm %v: %v\n%s", args, err, out)
	}
}

func medianDuration(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}
