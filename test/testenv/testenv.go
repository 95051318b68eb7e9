// Package testenv starts the real parts that depproxy's tests run against,
// on loopback: a CNCF Distribution registry as the upstream and a MinIO
// server as S3. The binaries come from `make tools` (hack/tools.sh).
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/depproxy/depproxy/proxy/storage"
)

// T is what the helpers need from a test; testing.TB has it, and so can a
// benchmark program.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// ToolsDir is where hack/tools.sh installs the pinned binaries.
func ToolsDir() string {
	if d := os.Getenv("DEPPROXY_TOOLS"); d != "" {
		return filepath.Join(d, "bin")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "depproxy-tools", "bin")
}

// Tool returns the path of a tool binary, failing the test (never
// skipping it) when `make tools` has not been run.
func Tool(t T, name string) string {
	t.Helper()
	if p := filepath.Join(ToolsDir(), name); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s is not installed: run `make tools`", name)
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// FreeAddr returns a loopback address with a free port.
func FreeAddr(t T) string { return FreeAddrOn(t, "127.0.0.1") }

// FreeAddrOn returns an address of host with a free port, for a process
// to listen on later. The port is below the kernel's ephemeral range
// (32768 and up here), where the kernel never picks a client's source
// port: a port of that range, free now, may be some connection's by the
// time the process binds it. It is below Kubernetes' NodePorts
// (30000-32767) too. Ports handed out are not handed out again by this
// test binary.
func FreeAddrOn(t T, host string) string {
	t.Helper()
	low, high := ephemeralRange()
	for range 200 {
		port := 10000 + rand.IntN(max(min(low, 30000)-10000, 1))
		if port >= low && port <= high {
			continue
		}
		handedMu.Lock()
		taken := handed[port]
		handed[port] = true
		handedMu.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String()
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

var (
	handedMu sync.Mutex
	handed   = map[int]bool{}
)

// ephemeralRange is the kernel's range of client source ports.
func ephemeralRange() (low, high int) {
	low, high = 32768, 60999
	if raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(raw)); len(f) == 2 {
			if l, err := strconv.Atoi(f[0]); err == nil && l > 10000 {
				low = l
			}
			if h, err := strconv.Atoi(f[1]); err == nil {
				high = h
			}
		}
	}
	return low, high
}

// process is a server binary the tests can stop and start again on the
// same address with the same data.
type process struct {
	t    T
	name string
	args []string
	env  []string
	log  string
	cmd  *exec.Cmd
	// ready is polled after start until it answers.
	ready string
}

func (p *process) Start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	p.cmd = exec.Command(p.args[0], p.args[1:]...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("starting %s: %v", p.name, err)
	}
	logf.Close()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(p.log)
	p.Stop()
	p.t.Fatalf("%s did not become ready at %s; its log:\n%s", p.name, p.ready, log)
}

// Stop kills the process and waits for it.
func (p *process) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	p.cmd = nil
}

// Pause stops the process where it stands (SIGSTOP): its sockets stay
// open and nothing answers, as with a hung server or a partition.
// Resume (SIGCONT) lets it go on. Both are undone when the test ends.
func (p *process) Pause() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(p.Resume)
}

// Resume lets a paused process go on.
func (p *process) Resume() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Registry is a CNCF Distribution registry.
type Registry struct {
	process
	// Addr is host:port; the registry speaks plain HTTP.
	Addr string
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return "http://" + r.Addr }

// RegistryConfig adds lines to a registry's YAML config (for proxy mode).
type RegistryConfig string

// StartRegistry starts a registry with its own storage; it stops with the
// test.
func StartRegistry(t T, extra ...RegistryConfig) *Registry {
	t.Helper()
	return StartRegistryAt(t, FreeAddr(t), extra...)
}

// StartRegistryAt is StartRegistry on addr, for a registry that a
// cluster's pods must reach at the node's address.
func StartRegistryAt(t T, addr string, extra ...RegistryConfig) *Registry {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}
http: {addr: %s}
`, filepath.Join(dir, "data"), addr)
	for _, e := range extra {
		cfg += string(e) + "\n"
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Registry{Addr: addr, process: process{
		t: t, name: "registry",
		args:  []string{Tool(t, "registry"), "serve", cfgPath},
		log:   filepath.Join(dir, "registry.log"),
		ready: "http://" + addr + "/v2/",
	}}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// MinIO is a MinIO server.
type MinIO struct {
	process
	Addr      string
	AccessKey string
	SecretKey string
}

// StartMinIO starts a MinIO server with its own data directory; it stops
// with the test.
func StartMinIO(t T) *MinIO {
	t.Helper()
	dir := t.TempDir()
	addr := FreeAddr(t)
	m := &MinIO{Addr: addr, AccessKey: "depproxy", SecretKey: "depproxy-secret"}
	m.process = process{
		t: t, name: "minio",
		args: []string{Tool(t, "minio"), "server", "--quiet", "--address", addr,
			"--console-address", FreeAddr(t), filepath.Join(dir, "data")},
		env:   []string{"MINIO_ROOT_USER=" + m.AccessKey, "MINIO_ROOT_PASSWORD=" + m.SecretKey, "MINIO_BROWSER=off"},
		log:   filepath.Join(dir, "minio.log"),
		ready: "http://" + addr + "/minio/health/ready",
	}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Credentials are the server's root credentials.
func (m *MinIO) Credentials() *credentials.Credentials {
	return credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")
}

// Storage returns an S3 backend on this server, in bucket (created if
// needed) under prefix.
func (m *MinIO) Storage(t T, bucket, prefix string) *storage.S3 {
	t.Helper()
	s3, err := storage.NewS3(bucket, prefix, storage.S3Options{Endpoint: m.Addr, Insecure: true, Credentials: m.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	// MinIO answers "Server not initialized yet" for a moment after its
	// health checks pass.
	var err2 error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err2 = s3.EnsureBucket(context.Background()); err2 == nil {
			return s3
		}
	}
	t.Fatal(err2)
	return nil
}

// SyncBuffer collects what a process writes while a test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) WriteString(str string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(str)
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
