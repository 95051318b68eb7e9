package config

import "sigs.k8s.io/yaml"

// File is the --config file of `depproxy serve`, as the operator renders
// it. Its keys are the flag names (a test holds them together).
type File struct {
	Listen            string `json:"listen,omitempty"`
	Upstream          string `json:"upstream,omitempty"`
	Storage           string `json:"storage,omitempty"`
	S3Endpoint        string `json:"s3-endpoint,omitempty"`
	S3Insecure        bool   `json:"s3-insecure,omitempty"`
	S3Region          string `json:"s3-region,omitempty"`
	RecheckInterval   string `json:"recheck-interval,omitempty"`
	PrefetchPlatforms string `json:"prefetch-platforms,omitempty"`
	SummaryInterval   string `json:"summary-interval,omitempty"`
	Users             string `json:"users,omitempty"`
	TokenKey          string `json:"token-key,omitempty"`
	ExternalURL       string `json:"external-url,omitempty"`
	Tenant            string `json:"tenant,omitempty"`
	UpstreamCreds     string `json:"upstream-credentials,omitempty"`
	UpstreamMirrorOf  string `json:"upstream-mirror-of,omitempty"`
}

// Marshal renders the file.
func (f File) Marshal() ([]byte, error) { return yaml.Marshal(f) }
