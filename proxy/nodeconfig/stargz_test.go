package nodeconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// The stargz snapshotter's config keeps the admin's settings and mirrors,
// the cache first among a registry's mirrors; written twice it is the
// same, and removed the admin's file is back byte for byte.
func TestStargzConfigMergesTheAdminsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	admin := `# the admin's
noprefetch = true
[blob]
check_always = true
[[resolver.host."ghcr.io".mirrors]]
host = "mirror.corp"
`
	os.WriteFile(path, []byte(admin), 0o644)
	merge, err := StargzConfig([]string{"docker.io", "ghcr.io"}, NodeOptions{Endpoint: "http://10.0.0.5:30500"})
	if err != nil {
		t.Fatal(err)
	}
	f := File{Path: path, Merge: merge}
	var first []byte
	for i := 0; i < 2; i++ {
		if err := f.Put(); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if i == 0 {
			first = got
		} else if string(got) != string(first) {
			t.Fatalf("written again, the file changed:\n%s\n%s", first, got)
		}
	}
	var cfg struct {
		NoPrefetch bool `toml:"noprefetch"`
		Blob       struct {
			CheckAlways bool `toml:"check_always"`
		} `toml:"blob"`
		Resolver struct {
			Host map[string]struct {
				Mirrors []struct {
					Host     string `toml:"host"`
					Insecure bool   `toml:"insecure"`
				} `toml:"mirrors"`
			} `toml:"host"`
		} `toml:"resolver"`
	}
	if err := toml.Unmarshal(first, &cfg); err != nil {
		t.Fatalf("%v\n%s", err, first)
	}
	if !cfg.NoPrefetch || !cfg.Blob.CheckAlways {
		t.Errorf("the admin's settings are gone:\n%s", first)
	}
	type m = struct {
		Host     string `toml:"host"`
		Insecure bool   `toml:"insecure"`
	}
	cache := m{Host: "10.0.0.5:30500", Insecure: true}
	if got := cfg.Resolver.Host["docker.io"].Mirrors; !reflect.DeepEqual(got, []m{cache}) {
		t.Errorf("docker.io's mirrors: %+v", got)
	}
	if got := cfg.Resolver.Host["ghcr.io"].Mirrors; !reflect.DeepEqual(got, []m{cache, {Host: "mirror.corp"}}) {
		t.Errorf("ghcr.io's mirrors: %+v, want the cache, then the admin's", got)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != admin {
		t.Fatalf("removed, the admin's file is not back: %q", got)
	}
}

func TestStargzConfigRefuses(t *testing.T) {
	if _, err := StargzConfig([]string{"_default"}, NodeOptions{Endpoint: "http://c:1"}); err == nil {
		t.Error("the catch-all was taken")
	}
	merge, _ := StargzConfig([]string{"docker.io"}, NodeOptions{Endpoint: "http://c:1"})
	if _, err := merge([]byte("resolver = 3\n")); err == nil {
		t.Error("a resolver that is not a table was taken")
	}
	if _, err := merge([]byte("not toml ===")); err == nil {
		t.Error("a broken config was taken")
	}
}
