package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// testCA issues certificates for 127.0.0.1.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "depproxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1 with this serial, and its key.
func (ca *testCA) issue(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// The registry port serves HTTPS with --tls-cert and --tls-key, to a
// real client trusting the CA, and a renewed certificate is served
// without a restart.
func TestTLS(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	img := ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	ca.issue(t, 100, certFile, keyFile)
	os.WriteFile(caFile, ca.pem, 0o644)

	s := settings.Defaults()
	s.Upstream, s.Storage, s.TLSCert, s.TLSKey = settings.Keys(e.front.URL()), t.TempDir(), certFile, keyFile
	host := proxytest.Start(t, s).Host

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	serial := func() int64 {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, err := c.Get("https://" + host + "/v2/")
		if err != nil {
			t.Fatalf("HTTPS: %v", err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 100 {
		t.Fatalf("serving certificate %d, want 100", got)
	}
	if resp, err := http.Get("http://" + host + "/v2/"); err == nil && resp.StatusCode == 200 {
		t.Fatal("the registry port also answers plain HTTP")
	}

	crane := exec.Command(testenv.Tool(t, "crane"), "digest", host+"/"+repo+":v1")
	crane.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile, "HOME="+t.TempDir())
	out, err := crane.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != digestOf(t, img).String() {
		t.Fatalf("crane over HTTPS: %v\n%s", err, out)
	}

	ca.issue(t, 200, certFile, keyFile) // renewed, as cert-manager would
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(certFile, later, later)
	eventually(t, 10*time.Second, "the renewed certificate is not served", func() bool { return serial() == 200 })
}
