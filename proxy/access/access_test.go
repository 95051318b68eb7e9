package access

import (
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	r, err := Parse([]string{"docker.io/library/*", "ghcr.io/our-org/**", "quay.io/team/app:1.*"}, []string{"docker.io/library/known-bad", "nginx:latest"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		registry, repo, tag string
		denied              string // a part of the reason, "" for allowed
	}{
		{"docker.io", "library/alpine", "3.20", ""},
		{"docker.io", "library/alpine", "", ""},
		{"docker.io", "library/known-bad", "1", "docker.io/library/known-bad"},
		{"docker.io", "library/known-bad", "", "docker.io/library/known-bad"}, // a blob of it
		{"docker.io", "library/nginx", "latest", "nginx:latest"},
		{"docker.io", "library/nginx", "1.25", ""},
		{"docker.io", "library/nginx", "", ""}, // by digest: the tag rule does not apply
		{"docker.io", "bitnami/redis", "7", "not allowed"},
		{"ghcr.io", "our-org/a/b/c", "v1", ""},
		{"ghcr.io", "other-org/a", "v1", "not allowed"},
		{"quay.io", "team/app", "1.4", ""},
		{"quay.io", "team/app", "2.0", "not allowed"},
		{"quay.io", "team/app", "", ""},
	} {
		got := r.Denied([]string{c.registry}, c.repo, c.tag)
		if (c.denied == "") != (got == "") || !strings.Contains(got, c.denied) {
			t.Errorf("%s/%s:%s: %q, want %q", c.registry, c.repo, c.tag, got, c.denied)
		}
	}
	var none *Rules
	if none.Denied([]string{"docker.io"}, "library/x", "") != "" || !none.Empty() {
		t.Error("no rules refuse something")
	}
	if _, err := Parse(nil, []string{"docker.io/a**b", "", "x@sha256:00"}); err == nil || strings.Count(err.Error(), "access rule") != 3 {
		t.Errorf("bad patterns: %v", err)
	}
}

// An upstream that mirrors another registry is held to the rules of
// every name it goes by: the one the client named and its own.
func TestRulesOverEveryName(t *testing.T) {
	r, err := Parse(nil, []string{"docker.io/library/secret", "127.0.0.1:5000/private/**"})
	if err != nil {
		t.Fatal(err)
	}
	mirror := []string{"127.0.0.1:5000", "docker.io"}
	for _, c := range []struct {
		names  []string
		repo   string
		denied bool
	}{
		{mirror, "secret", true}, // ?ns=docker.io with a short name: library/ applies
		{mirror, "library/secret", true},
		{[]string{"index.docker.io"}, "secret", true},
		{[]string{"127.0.0.1:5000"}, "library/secret", false}, // its own name alone: no rule for it
		{mirror, "private/x", true},
		{mirror, "library/alpine", false},
	} {
		if got := r.Denied(c.names, c.repo, ""); (got != "") != c.denied {
			t.Errorf("%v %s: %q, want denied %v", c.names, c.repo, got, c.denied)
		}
	}
	// Docker Hub under another name: the upstream asks for library/x,
	// the rule says x.
	corp, err := Parse(nil, []string{"hub.corp/nginx"})
	if err != nil {
		t.Fatal(err)
	}
	if got := corp.Denied([]string{"hub.corp", "registry-1.docker.io"}, "library/nginx", ""); got == "" {
		t.Error("a rule for a Docker Hub upstream under its own name, short form, did not hold")
	}
	allow, err := Parse([]string{"docker.io/library/*"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := allow.Denied(mirror, "alpine", ""); got != "" {
		t.Errorf("an allow rule for the mirrored name: %q", got)
	}
	if got := allow.Denied(mirror, "org/app", ""); got == "" {
		t.Error("a repository no allow rule names was allowed")
	}
}

func TestUnserved(t *testing.T) {
	r, err := Parse([]string{"ghcr.io/org/**", "*.example/**"}, []string{"nginx", "docker.io/x/y", "typo.io/secret", "**/secret"})
	if err != nil {
		t.Fatal(err)
	}
	got := r.Unserved([]string{"index.docker.io", "ghcr.io", "127.0.0.1:5000"})
	if strings.Join(got, ",") != "*.example/**,typo.io/secret" {
		t.Errorf("unserved: %q", got)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                   "docker.io/library/nginx",
		"index.docker.io/nginx":   "docker.io/library/nginx",
		"bitnami/redis":           "docker.io/bitnami/redis",
		"localhost:5000/a/b":      "localhost:5000/a/b",
		"ghcr.io/org/**":          "ghcr.io/org/**",
		"registry-1.docker.io/x":  "docker.io/library/x",
		"docker.io/library/x:1.2": "docker.io/library/x",
	} {
		if got, _ := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

// reference matches a pattern's components against a name's the slow,
// obvious way.
func reference(p, n []string) bool {
	if len(p) == 0 {
		return len(n) == 0
	}
	if p[0] == "**" {
		for i := 0; i <= len(n); i++ {
			if reference(p[1:], n[i:]) {
				return true
			}
		}
		return false
	}
	return len(n) > 0 && component(p[0], n[0]) && reference(p[1:], n[1:])
}

// component matches * within one component.
func component(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if component(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && p[0] == s[0] && component(p[1:], s[1:])
}

func FuzzMatcher(f *testing.F) {
	for _, seed := range [][2]string{{"a/*/b", "a/x/b"}, {"a/**", "a/b/c"}, {"a/**/b", "a/b"}, {"*a*", "bab"}, {"a/**/b/*", "a/x/y/b/z"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if strings.ContainsAny(pattern+name, ":@. \t\n") || pattern == "" || name == "" || strings.Contains(name, "*") ||
			strings.Contains(name, "//") || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
			return
		}
		pat := "reg.io/" + pattern
		r, err := Parse([]string{pat}, nil)
		if err != nil {
			return // not a pattern
		}
		got := r.Denied([]string{"reg.io"}, name, "") == ""
		p := strings.Split(pattern, "/")
		if p[len(p)-1] == "**" {
			// A trailing ** matches one component or more below.
			want := false
			n := strings.Split(name, "/")
			for i := 0; i < len(n); i++ {
				if reference(p[:len(p)-1], n[:i]) {
					want = true
				}
			}
			if got != want {
				t.Fatalf("pattern %q, name %q: matcher %v, reference %v", pattern, name, got, want)
			}
			return
		}
		if want := reference(p, strings.Split(name, "/")); got != want {
			t.Fatalf("pattern %q, name %q: matcher %v, reference %v", pattern, name, got, want)
		}
	})
}
