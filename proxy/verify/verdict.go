package verify

import "github.com/opencontainers/go-digest"

// Verdict is what the policy in force has decided of the manifest d of
// repo, of a registry known by names, as the audit log says it:
// "verified", "refused: REASON", or "audited: REASON" (failed, and
// served: audit mode). It is "" when no rule applies, or no verdict is
// kept (a signature artifact, which is not verified; a failure to read
// the signatures, which is asked again).
func (v *Verifier) Verdict(names []string, repo string, d digest.Digest) string {
	p := v.policy.Load()
	r := p.match(names, repo)
	if r == nil {
		return ""
	}
	reason, ok := v.known(verdictKey{d, p.hash, r.n})
	switch {
	case !ok:
		return ""
	case reason == "":
		return verified
	case p.Mode == Audit:
		return audited + ": " + reason
	}
	return refused + ": " + reason
}
