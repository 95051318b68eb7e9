// Package registryname holds the rules of registry names in one place:
// what a registry host may be called, and Docker Hub's several names
// (docker.io in image names, index.docker.io in go-containerregistry and
// docker login, registry-1.docker.io for its API) and its library/
// namespace for official images.
package registryname

import (
	"net/url"
	"strings"
)

const (
	// DockerHub is Docker Hub's name in image references and in
	// containerd's ?ns=.
	DockerHub = "docker.io"
	// DockerHubURL is where Docker Hub's registry API answers: the
	// default upstream, and where a node falls back to for docker.io.
	DockerHubURL = "https://registry-1.docker.io"
	// DockerLoginKey is how `docker login` names Docker Hub in a
	// .dockerconfigjson.
	DockerLoginKey = "https://index.docker.io/v1/"
)

// IsDockerHub reports whether host is one of Docker Hub's names.
func IsDockerHub(host string) bool {
	switch host {
	case DockerHub, "index.docker.io", "registry-1.docker.io":
		return true
	}
	return false
}

// Of is the registry name of an upstream URL: its host, with Docker
// Hub's hosts named docker.io; "" for what is not a URL.
func Of(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	if IsDockerHub(u.Host) {
		return DockerHub
	}
	return u.Host
}

// Repository is the repository as a registry names it: on Docker Hub,
// official images live under library/ (nginx is library/nginx).
func Repository(dockerHub bool, repo string) string {
	if dockerHub && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

// LooksLikeHost is Docker's rule for the first element of an image name:
// a registry host has a dot or a port, or is localhost.
func LooksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// ServerURL parses the URL of a registry, a cache or a replica: http or
// https, a host, and nothing after it but an optional "/".
func ServerURL(raw string) (*url.URL, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, false
	}
	return u, true
}

// HelmScheme prefixes the URL of an upstream that is a classic Helm
// chart repository, not a registry: helm+https://charts.example.com/stable.
const HelmScheme = "helm+"

// ChartRepoURL parses a classic Helm chart repository's URL (without
// HelmScheme): http or https, a host, and a path, which ends in "/" (what
// index.yaml and relative chart URLs resolve against).
func ChartRepoURL(raw string) (*url.URL, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, false
	}
	u.Path, u.RawPath = strings.TrimSuffix(u.Path, "/")+"/", ""
	return u, true
}

// Server is where a registry's images come from without a mirror.
func Server(registry string) string {
	if IsDockerHub(registry) {
		return DockerHubURL
	}
	return "https://" + registry
}

// Valid: a host name, optionally with a port; what can be a directory
// name, a storage key element and a path prefix.
func Valid(s string) bool {
	host, port, hasPort := strings.Cut(s, ":")
	if host == "" || len(s) > 253 || (hasPort && (port == "" || strings.Trim(port, "0123456789") != "")) {
		return false
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || strings.Trim(strings.ToLower(label), "abcdefghijklmnopqrstuvwxyz0123456789-") != "" ||
			strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
	}
	return true
}
