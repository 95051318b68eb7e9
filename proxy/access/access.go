// Package access decides what a cache may pull: allow and deny rules over
// registry/repository[:tag], matched after the names are normalised the
// way clients normalise them (nginx is docker.io/library/nginx).
//
// In a pattern, * matches within one path component, ** across any
// number of them; a :tag part, when given, matches the tag the same way
// (a pull by digest, or a blob, is matched on its repository alone).
// Deny wins; with no allow rule, everything not denied is allowed.
package access

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/depproxy/depproxy/proxy/registryname"
)

// Rules are a cache's allow and deny rules. The zero value allows all.
type Rules struct {
	allow, deny []rule
}

type rule struct {
	text      string // as written, for the refusal's message
	name, tag *regexp.Regexp
	// registry matches the pattern's registry alone: which upstreams
	// the rule can ever apply to.
	registry *regexp.Regexp
}

// Parse reads allow and deny patterns; a pattern that is not one is an
// error naming it.
func Parse(allow, deny []string) (*Rules, error) {
	r := &Rules{}
	var errs []error
	for _, set := range []struct {
		patterns []string
		into     *[]rule
	}{{allow, &r.allow}, {deny, &r.deny}} {
		for _, p := range set.patterns {
			ru, err := parseRule(p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			*set.into = append(*set.into, ru)
		}
	}
	return r, errors.Join(errs...)
}

// Normalize is a pattern's, or an image name's, registry/repository and
// tag as clients mean them: a name without a registry is Docker Hub's,
// and a single component there is library/'s.
func Normalize(s string) (name, tag string) {
	registry, rest := registryname.DockerHub, s
	if first, after, ok := strings.Cut(s, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		registry, rest = first, after
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		rest, tag = rest[:i], rest[i+1:]
	}
	if registryname.IsDockerHub(registry) {
		registry = registryname.DockerHub
		if !strings.Contains(rest, "/") && rest != "**" {
			rest = "library/" + rest
		}
	}
	return registry + "/" + rest, tag
}

func parseRule(p string) (rule, error) {
	if strings.TrimSpace(p) == "" || strings.ContainsAny(p, " \t@") || !utf8.ValidString(p) {
		return rule{}, fmt.Errorf("access rule %q: want registry/repository[:tag], with * and ** as wildcards", p)
	}
	name, tag := Normalize(p)
	for _, c := range strings.Split(name, "/") {
		if c == "" || (strings.Contains(c, "**") && c != "**") {
			return rule{}, fmt.Errorf("access rule %q: an empty path component, or ** inside one (** stands alone between slashes)", p)
		}
	}
	registry, _, _ := strings.Cut(name, "/")
	r := rule{text: p, name: glob(name, true), registry: glob(registry, true)}
	if tag != "" {
		r.tag = glob(tag, false)
	}
	return r, nil
}

// glob compiles a pattern: * within a component, ** (a component of its
// own) across components, including none.
func glob(p string, path bool) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	parts := strings.Split(p, "/")
	if !path {
		parts = []string{p}
	}
	for i, c := range parts {
		if c == "**" {
			switch {
			case i == len(parts)-1:
				b.WriteString(".*") // a/** matches a/x and a/x/y
			default:
				b.WriteString("(?:[^/]+/)*") // a/**/b matches a/b and a/x/y/b
			}
			continue
		}
		for j, seg := range strings.Split(c, "*") {
			if j > 0 {
				b.WriteString("[^/]*")
			}
			b.WriteString(regexp.QuoteMeta(seg))
		}
		if i < len(parts)-1 {
			b.WriteString("/")
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// Denied says why repo (a tag of it, when tag is set) may not be pulled
// from a registry that goes by names: the one the client named, the
// upstream's own, those it mirrors. A deny rule matching any of them
// refuses; with allow rules, one of them must match. Names are taken as
// clients mean them: Docker Hub's aliases are docker.io, and its
// single-component repositories library/'s, so a rule written for
// docker.io holds however the request reached the upstream that mirrors
// it. It says "" when repo may be pulled.
func (r *Rules) Denied(names []string, repo, tag string) string {
	if r == nil {
		return ""
	}
	// An upstream with Docker Hub's naming asks for library/nginx where
	// the client, and a rule written for the upstream's own name, say
	// nginx: both forms are matched.
	repos := []string{repo}
	if short, ok := strings.CutPrefix(repo, "library/"); ok && !strings.Contains(short, "/") {
		repos = append(repos, short)
	}
	full := make([]string, 0, 2*len(names))
	for _, n := range names {
		if n == "" {
			continue
		}
		hub := registryname.IsDockerHub(n)
		if hub {
			n = registryname.DockerHub
		}
		for _, rp := range repos {
			full = append(full, n+"/"+registryname.Repository(hub, rp))
		}
	}
	for _, ru := range r.deny {
		for _, name := range full {
			if ru.matches(name, tag) {
				return "denied by the rule " + ru.text
			}
		}
	}
	if len(r.allow) == 0 {
		return ""
	}
	for _, ru := range r.allow {
		for _, name := range full {
			if ru.name.MatchString(name) && (tag == "" || ru.tag == nil || ru.tag.MatchString(tag)) {
				return ""
			}
		}
	}
	return "not allowed by any rule of this cache"
}

// Unserved are the rules, as written, whose registry is none of names
// (every name an upstream is known by): a rule that can never match is
// a typo or a registry the cache was never set up for, and would guard
// nothing.
func (r *Rules) Unserved(names []string) []string {
	if r == nil {
		return nil
	}
	var out []string
	for _, ru := range append(append([]rule(nil), r.allow...), r.deny...) {
		served := false
		for _, n := range names {
			if registryname.IsDockerHub(n) {
				n = registryname.DockerHub
			}
			if ru.registry.MatchString(n) {
				served = true
				break
			}
		}
		if !served {
			out = append(out, ru.text)
		}
	}
	return out
}

// matches: a deny rule with a tag refuses that tag only; without, the
// whole repository.
func (ru rule) matches(name, tag string) bool {
	if !ru.name.MatchString(name) {
		return false
	}
	if ru.tag == nil {
		return true
	}
	return tag != "" && ru.tag.MatchString(tag)
}

// Empty: no rule at all.
func (r *Rules) Empty() bool { return r == nil || len(r.allow)+len(r.deny) == 0 }
