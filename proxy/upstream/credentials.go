package upstream

import (
	"github.com/depproxy/depproxy/proxy/registryname"

	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// FileCredentials reads the upstream's credentials from a mounted Secret:
// a directory with .dockerconfigjson (a kubernetes.io/dockerconfigjson
// Secret), or with username and password files (basic-auth). It re-reads
// them when the Secret changes, so a rotated password needs no restart.
// A .dockerconfigjson naming a credential helper for the host
// (credHelpers, or credsStore) runs docker-credential-<name> from PATH,
// through the library the helpers speak, again after helperTTL.
func FileCredentials(dir, registryHost string) authn.Authenticator {
	return &fileCredentials{dir: dir, host: registryHost}
}

type fileCredentials struct {
	dir, host string

	mu      sync.Mutex
	loaded  bool
	version string
	cfg     *authn.AuthConfig
	err     error
	// helped: the credentials came from a helper, until then.
	helped time.Time
}

// helperTTL is how long a credential helper's answer is used: helpers
// hand out short-lived tokens (ECR's last 12 hours, others less).
var helperTTL = time.Minute

// Authorization implements authn.Authenticator.
func (f *fileCredentials) Authorization() (*authn.AuthConfig, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := f.currentVersion(); !f.loaded || v != f.version || (!f.helped.IsZero() && time.Now().After(f.helped)) {
		f.loaded, f.version, f.helped = true, v, time.Time{}
		f.cfg, f.err = f.load()
	}
	return f.cfg, f.err
}

// currentVersion changes whenever a file of the Secret does. (Kubernetes
// swaps a mounted Secret's files through a symlink, which changes them
// all at once.)
func (f *fileCredentials) currentVersion() string {
	var b strings.Builder
	for _, name := range []string{".dockerconfigjson", "username", "password"} {
		if st, err := os.Stat(filepath.Join(f.dir, name)); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", name, st.ModTime().UnixNano(), st.Size())
		}
	}
	return b.String()
}

func (f *fileCredentials) load() (*authn.AuthConfig, error) {
	if raw, err := os.ReadFile(filepath.Join(f.dir, ".dockerconfigjson")); err == nil {
		cf := configfile.New("")
		if err := cf.LoadFromReader(bytes.NewReader(raw)); err != nil {
			return nil, fmt.Errorf("upstream credentials: .dockerconfigjson: %w", err)
		}
		keys := []string{f.host, "https://" + f.host, "http://" + f.host}
		if f.host == name.DefaultRegistry {
			keys = append(keys, registryname.DockerLoginKey)
		}
		for _, key := range keys {
			_, stored := cf.AuthConfigs[key]
			helper := cf.CredentialHelpers[key]
			if helper == "" && !stored {
				helper = cf.CredentialsStore
			}
			if !stored && helper == "" {
				continue
			}
			// GetAuthConfig runs the helper, if one is named.
			ac, err := cf.GetAuthConfig(key)
			if err != nil {
				return nil, fmt.Errorf("upstream credentials: the credential helper docker-credential-%s for %s: %w", helper, f.host, err)
			}
			if helper != "" {
				f.helped = time.Now().Add(helperTTL)
				if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" {
					continue // the store has nothing for this key
				}
			}
			return &authn.AuthConfig{Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}, nil
		}
		return nil, fmt.Errorf("upstream credentials: .dockerconfigjson has no entry for %s", f.host)
	}
	user, uerr := os.ReadFile(filepath.Join(f.dir, "username"))
	pass, perr := os.ReadFile(filepath.Join(f.dir, "password"))
	if uerr != nil || perr != nil {
		return nil, errors.Join(errors.New("upstream credentials: want .dockerconfigjson, or username and password, in "+f.dir), uerr, perr)
	}
	return &authn.AuthConfig{Username: strings.TrimSpace(string(user)), Password: strings.TrimRight(string(pass), "\r\n")}, nil
}
