// Package proxytest starts a depproxy for a test, the one way tests do:
// in this process from its settings (Start), or as the depproxy binary
// built from this checkout (Serve). Either listens on free loopback
// ports, is ready when it returns, stops when the test ends, and shows
// its log if the test failed.
//
// It imports proxy/server, so proxy/server's own tests that use it are
// in package server_test.
package proxytest

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/testenv"
)

// readyWithin is how long a proxy may take to answer /readyz; a loaded
// machine builds and starts the binary slowly.
const readyWithin = 30 * time.Second

// Proxy is a depproxy run in this process as `depproxy serve` runs it.
type Proxy struct {
	URL  string // the registry port's base URL (https with --tls-cert)
	Host string // its host:port, as clients name the registry
	Ops  string // the metrics port's base URL
	// Server is the proxy itself, for the tests that look at its
	// storage, cache or summary, or call its handler.
	Server *server.Server

	stop     context.CancelFunc
	done     chan error
	stopOnce sync.Once
	stopErr  error
}

// Start runs the proxy of s until the test ends. Its listen addresses
// are free loopback ports; its storage, if s names the default, is a
// directory of the test's.
func Start(t testing.TB, s settings.Settings, opts ...server.Option) *Proxy {
	t.Helper()
	s.Listen, s.MetricsListen = testenv.FreeAddr(t), testenv.FreeAddr(t)
	if s.Storage == settings.Defaults().Storage {
		s.Storage = t.TempDir() // never ./data in the test's directory
	}
	logs := &testenv.SyncBuffer{}
	log := funcr.New(func(prefix, args string) { logs.WriteString(prefix + " " + args + "\n") }, funcr.Options{})
	srv, err := server.New(context.Background(), s, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{URL: "http://" + s.Listen, Host: s.Listen, Ops: "http://" + s.MetricsListen, Server: srv,
		stop: cancel, done: make(chan error, 1)}
	if s.TLSCert != "" {
		p.URL = "https://" + s.Listen
	}
	go func() { p.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("the proxy stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("the proxy's logs:\n%s", logs.String())
		}
	})
	waitReady(t, p.Ops, logs, nil)
	return p
}

// Stop ends the proxy as SIGTERM does, and returns what Run returned.
func (p *Proxy) Stop() error {
	p.stopOnce.Do(func() {
		p.stop()
		p.stopErr = <-p.done
	})
	return p.stopErr
}

var built struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// Binary is the depproxy command built from this checkout, once per
// test binary, for the tests that run its other commands.
func Binary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "depproxy-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "depproxy")
		built.out, built.err = exec.Command("go", "build", "-o", built.path, "github.com/depproxy/depproxy/proxy/cmd/depproxy").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.path
}

// Serve is a `depproxy serve` to run from Binary.
type Serve struct {
	Args []string // its flags but the ports
	// Listen and MetricsListen are its ports, passed as flags (they
	// win over a --config file's); free loopback ones if empty. A test
	// that restarts a proxy where it was, or tells replicas of each
	// other, picks them first.
	Listen, MetricsListen string
	Env                   []string  // added to this process's environment
	Stdout                io.Writer // its standard output (--audit-log -); discarded if nil
	// Log takes its standard error; a new buffer if nil.
	Log *testenv.SyncBuffer
}

// Process is a running `depproxy serve`.
type Process struct {
	URL  string // the registry port's base URL
	Host string // its host:port
	Ops  string // the metrics port's base URL
	Log  *testenv.SyncBuffer

	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process is reaped
	waitErr error         // how it exited, once exited is closed
}

// StartBinary runs `depproxy serve` with args on free loopback ports.
func StartBinary(t testing.TB, args ...string) *Process {
	t.Helper()
	return Serve{Args: args}.Start(t)
}

// Start runs the process and waits for it to be ready; the test's end
// kills it.
func (c Serve) Start(t testing.TB) *Process {
	t.Helper()
	if c.Listen == "" {
		c.Listen = testenv.FreeAddr(t)
	}
	if c.MetricsListen == "" {
		c.MetricsListen = testenv.FreeAddr(t)
	}
	if c.Log == nil {
		c.Log = &testenv.SyncBuffer{}
	}
	cmd := exec.Command(Binary(t), append([]string{"serve", "--listen", c.Listen, "--metrics-listen", c.MetricsListen}, c.Args...)...)
	cmd.Stdout, cmd.Stderr = c.Stdout, c.Log
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{URL: "http://" + c.Listen, Host: c.Listen, Ops: "http://" + c.MetricsListen, Log: c.Log, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("depproxy %s:\n%s", p.URL, p.Log.String())
		}
	})
	waitReady(t, p.Ops, p.Log, p.exited)
	return p
}

// Kill ends the process as a crash would (SIGKILL) and reaps it.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// Terminate sends SIGTERM and returns how the process exited; it fails
// the test if the process still runs after within.
func (p *Process) Terminate(t testing.TB, within time.Duration) error {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.waitErr
	case <-time.After(within):
		t.Fatalf("depproxy did not stop within %v of SIGTERM", within)
		return nil
	}
}

// Exited says whether the process is gone (and reaped).
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// waitReady waits for a proxy's metrics port to say it is ready, or its
// process to be gone (exited; nil for one in this process).
func waitReady(t testing.TB, ops string, logs *testenv.SyncBuffer, exited <-chan struct{}) {
	t.Helper()
	for deadline := time.Now().Add(readyWithin); ; time.Sleep(25 * time.Millisecond) {
		if resp, err := http.Get(ops + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("depproxy exited before it was ready; its log:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("depproxy did not become ready within %v; its log:\n%s", readyWithin, logs.String())
		}
	}
}
