// Command plugin is a kubelet credential provider plugin for the tests,
// speaking credentialprovider.kubelet.k8s.io/v1 with the kubelet's own
// types: for the image's registry it answers the user "plugin" and the
// password in $PLUGIN_SECRET_FILE, valid $PLUGIN_CACHE_DURATION; it
// records each request in $PLUGIN_CALLS_FILE, the service-account token
// and annotations it was given in $PLUGIN_TOKEN_FILE, its environment in
// $PLUGIN_ENV_FILE, and fails while $PLUGIN_FAIL_FILE exists. With
// $PLUGIN_CACHE_KEY_TYPE=Image its credentials are the image's
// repository's: the password is followed by @ and the repository.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
)

func main() {
	var req credentialproviderv1.CredentialProviderRequest
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil || req.Kind != "CredentialProviderRequest" {
		fmt.Fprintln(os.Stderr, "not a CredentialProviderRequest:", err)
		os.Exit(1)
	}
	if f, err := os.OpenFile(os.Getenv("PLUGIN_CALLS_FILE"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, req.Image)
		f.Close()
	}
	if path := os.Getenv("PLUGIN_TOKEN_FILE"); path != "" {
		seen, _ := json.Marshal(map[string]any{"token": req.ServiceAccountToken, "annotations": req.ServiceAccountAnnotations})
		os.WriteFile(path, seen, 0o600)
	}
	if path := os.Getenv("PLUGIN_ENV_FILE"); path != "" {
		os.WriteFile(path, []byte(strings.Join(os.Environ(), "\n")), 0o600)
	}
	if _, err := os.Stat(os.Getenv("PLUGIN_FAIL_FILE")); err == nil {
		fmt.Fprintln(os.Stderr, "the cloud's token service is down")
		os.Exit(1)
	}
	secret, err := os.ReadFile(os.Getenv("PLUGIN_SECRET_FILE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, _ := time.ParseDuration(os.Getenv("PLUGIN_CACHE_DURATION"))
	registry, _, _ := strings.Cut(req.Image, "/")
	key, password := registry, strings.TrimSpace(string(secret))
	keyType := credentialproviderv1.RegistryPluginCacheKeyType
	if os.Getenv("PLUGIN_CACHE_KEY_TYPE") == string(credentialproviderv1.ImagePluginCacheKeyType) {
		keyType = credentialproviderv1.ImagePluginCacheKeyType
		// host/repository, without its tag or digest.
		key = req.Image
		if i := strings.LastIndex(key, "@"); i >= 0 {
			key = key[:i]
		} else if i := strings.LastIndex(key, ":"); i > strings.LastIndex(key, "/") {
			key = key[:i]
		}
		_, repo, _ := strings.Cut(key, "/")
		password += "@" + repo
	}
	json.NewEncoder(os.Stdout).Encode(credentialproviderv1.CredentialProviderResponse{
		TypeMeta:      metav1.TypeMeta{Kind: "CredentialProviderResponse", APIVersion: "credentialprovider.kubelet.k8s.io/v1"},
		CacheKeyType:  keyType,
		CacheDuration: &metav1.Duration{Duration: d},
		Auth:          map[string]credentialproviderv1.AuthConfig{key: {Username: "plugin", Password: password}},
	})
}
