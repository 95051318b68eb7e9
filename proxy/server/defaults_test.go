package server

import (
	"testing"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// The settings write the parts' defaults as constants of their own (the
// operator renders settings without linking the parts): they must say
// what the parts do.
func TestSettingsDefaultsAreThePartsDefaults(t *testing.T) {
	for _, c := range []struct {
		name          string
		settings, own int64
	}{
		{"max-downloads", settings.DefaultMaxDownloads, int64(cache.DefaultLimits.MaxDownloads)},
		{"max-blob-size", settings.DefaultMaxBlobSize, cache.DefaultLimits.MaxBlobSize},
		{"manifest-memory", settings.DefaultManifestMemory, cache.DefaultMemory},
		{"storage-timeout", int64(settings.DefaultStorageTimeout), int64(storage.DefaultTimeout)},
		{"ratelimit-reserve", settings.DefaultRateLimitReserve, upstream.DefaultRateLimitReserve},
	} {
		if c.settings != c.own {
			t.Errorf("--%s: the settings' default is %d, the part's %d", c.name, c.settings, c.own)
		}
	}
}
