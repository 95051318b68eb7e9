package localmirror

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A digest pulled under more repositories than the book keeps loses the
// one it was pulled under the longest ago, not the others; the book
// outlives the agent.
func TestBookKeepsTheRecentNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "book.json")
	d := digest.FromString("a layer")
	b, err := openBook(path, func(digest.Digest) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= maxNames; i++ {
		b.learn(fmt.Sprintf("/team/app%d", i), "", d)
	}
	b.learn("/team/app1", "v1", d)
	if b.named(d, "/team/app0") {
		t.Error("the repository pulled under the longest ago is still named")
	}
	for _, repo := range []string{"/team/app1", "/team/app2", fmt.Sprintf("/team/app%d", maxNames)} {
		if !b.named(d, repo) {
			t.Errorf("%s was forgotten", repo)
		}
	}
	b.save()
	again, err := openBook(path, func(digest.Digest) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := again.tag("/team/app1", "v1"); !ok || got != d || !again.named(d, "/team/app2") {
		t.Errorf("after a restart: tag %v %v, named %v", got, ok, again.named(d, "/team/app2"))
	}
}
