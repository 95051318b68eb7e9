package nodeconfig

import (
	"os"
	"path/filepath"
	"testing"
)

// A file that is not depproxy's is kept aside, never overwritten or
// removed, and comes back when depproxy's goes.
func TestWriteKeepsAsideAndRemoveRestores(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docker.io", "hosts.toml")
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte("server = \"https://mirror.corp\"\n"), 0o644)
	_, content, _ := RenderNodeFile(ContainerdHosts, "", NodeMirror{Registry: "docker.io"}, NodeOptions{Endpoint: "http://c:1"})
	for i := 0; i < 2; i++ { // writing again keeps the original aside, not ours
		if err := Write(path, content); err != nil {
			t.Fatal(err)
		}
	}
	if !Present(path) {
		t.Fatal("depproxy's file is not in place")
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "server = \"https://mirror.corp\"\n" {
		t.Fatalf("restored %q", got)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "server = \"https://mirror.corp\"\n" {
		t.Fatalf("a second remove touched a file not depproxy's: %q", got)
	}
}
