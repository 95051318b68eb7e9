package settings

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// flagsBegin and flagsEnd mark the generated table in the page.
const (
	flagsBegin = "<!-- flags: generated from the settings by `make docs`; do not edit -->\n"
	flagsEnd   = "<!-- end of flags -->\n"
)

// The configuration page's flag table is the flags' own: a flag added,
// renamed or redescribed without `make docs` fails here.
func TestConfigurationPageFlags(t *testing.T) {
	const page = "../../docs/configuration.md"
	raw, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(raw), flagsBegin)
	table, _, ok2 := strings.Cut(rest, flagsEnd)
	if !ok1 || !ok2 {
		t.Fatalf("%s has no generated flag table between %q and %q", page, flagsBegin, flagsEnd)
	}
	var want bytes.Buffer
	WriteFlagTable(&want)
	if table != want.String() {
		if os.Getenv("DEPPROXY_UPDATE_DOCS") != "" {
			os.WriteFile(page, []byte(strings.Replace(string(raw), flagsBegin+table+flagsEnd, flagsBegin+want.String()+flagsEnd, 1)), 0o644)
			return
		}
		t.Errorf("%s's flag table is stale: run make docs\ngot:\n%s\nwant:\n%s", page, table, want.String())
	}
}
