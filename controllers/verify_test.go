package controllers

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/verify"
	"github.com/depproxy/depproxy/test/notationtest"
	"github.com/depproxy/depproxy/test/sigstoretest"
	"github.com/depproxy/depproxy/test/testenv"
)

// spec.verify's builders, without a cluster.

// cosignPub is a new public key as cosign writes cosign.pub.
func cosignPub(t testing.TB) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func keyRule(images []string, secrets ...string) depproxyv1.VerifyRule {
	r := depproxyv1.VerifyRule{Images: images}
	for _, s := range secrets {
		name, key, _ := strings.Cut(s, "/")
		r.Keys = append(r.Keys, depproxyv1.VerifyKey{SecretRef: depproxyv1.SecretKeyRef{Name: name, Key: key}})
	}
	return r
}

// keyless is a keyless identity whose trusted root is the ConfigMap
// sigstore-root's default key.
func keyless(issuer, issuerRE, subject, subjectRE string) *depproxyv1.VerifyKeyless {
	return &depproxyv1.VerifyKeyless{Issuer: issuer, IssuerRegExp: issuerRE, Subject: subject, SubjectRegExp: subjectRE,
		TrustedRootRef: depproxyv1.ConfigMapKeyRef{Name: "sigstore-root"}}
}

func withKeyless(r depproxyv1.VerifyRule, k *depproxyv1.VerifyKeyless) depproxyv1.VerifyRule {
	r.Keyless = k
	return r
}

func verifyingProxy(mode depproxyv1.VerifyMode, rules ...depproxyv1.VerifyRule) *depproxyv1.DependencyProxy {
	dp := testProxy()
	dp.Spec.Verify = &depproxyv1.VerifySpec{Mode: mode, Rules: rules}
	return dp
}

// materialize writes the keys where the projected volume puts them,
// under dir in place of the mount path, and returns the policy with
// its paths moved there too: what the proxy's pod sees.
func materialize(t *testing.T, v *verifyRendering, keys map[verifyKeyRef][]byte) (policy []byte, dir string) {
	t.Helper()
	dir = t.TempDir()
	vol := verifyKeysVolume(v)
	if vol == nil {
		return []byte(strings.ReplaceAll(string(v.policy), verifyKeysDir, dir)), dir
	}
	for _, src := range vol.Projected.Sources {
		for _, it := range src.Secret.Items {
			pub, ok := keys[verifyKeyRef{src.Secret.Name, it.Key}]
			if !ok {
				t.Fatalf("the volume mounts %s/%s, which the test has no key for", src.Secret.Name, it.Key)
			}
			p := filepath.Join(dir, it.Path)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, pub, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []byte(strings.ReplaceAll(string(v.policy), verifyKeysDir, dir)), dir
}

// The policy is read as the proxy reads it, with the keys where the
// volume puts them: only the keys named, each once, the default key
// cosign.pub.
func TestVerifyPolicyIsReadAsTheProxyReadsIt(t *testing.T) {
	keys := map[verifyKeyRef][]byte{{"org-keys", "cosign.pub"}: cosignPub(t), {"org-keys", "release.pub"}: cosignPub(t), {"docker", "cosign.pub"}: cosignPub(t)}
	dp := verifyingProxy(depproxyv1.VerifyAudit,
		keyRule([]string{"ghcr.io/our-org/**"}, "org-keys", "org-keys/release.pub"),
		keyRule([]string{"docker.io/library/*", "nginx"}, "docker/cosign.pub", "org-keys/cosign.pub"))
	dp.Spec.Verify.Rules[1].IgnoreTlog = true
	v, err := renderVerify(dp, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.keys) != 3 || len(v.dropped) != 0 {
		t.Fatalf("keys %v dropped %v", v.keys, v.dropped)
	}
	raw, dir := materialize(t, v, keys)
	p, err := verify.Parse(raw, dir)
	if err != nil {
		t.Fatalf("the proxy refuses the rendered policy: %v\n%s", err, raw)
	}
	if p.Mode != verify.Audit {
		t.Errorf("mode %s", p.Mode)
	}
	policyHas(t, v.policy, "mode: audit", "ignoreTlog: true", "file: "+verifyKeysDir+"/org-keys/release.pub", "file: "+verifyKeysDir+"/docker/cosign.pub", "- nginx")
	vol := verifyKeysVolume(v)
	if len(vol.Projected.Sources) != 2 || vol.Projected.Sources[0].Secret.Name != "docker" || len(vol.Projected.Sources[1].Secret.Items) != 2 {
		t.Errorf("one source per Secret, sorted, each key once: %+v", vol.Projected.Sources)
	}

	// Wired: the config names the policy, the pods mount the keys.
	cm, err := desiredConfigMap(dp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cm, err = withVerify(cm, v); err != nil {
		t.Fatal(err)
	}
	conf, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil || conf.VerifyPolicy != configDir+"/"+verifyPolicyKey || cm.Data[verifyPolicyKey] != string(v.policy) {
		t.Fatalf("config %v %+v", err, cm.Data)
	}
	d := desiredDeployment(dp, "img", "", configHash(cm), "")
	mountVerifyKeys(d, v)
	mounted := false
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounted = mounted || (m.Name == "verify-keys" && m.MountPath == verifyKeysDir && m.ReadOnly)
	}
	if !mounted {
		t.Errorf("keys not mounted at %s: %+v", verifyKeysDir, d.Spec.Template.Spec.Containers[0].VolumeMounts)
	}
}

// A missing key never makes the policy weaker than written: in enforce
// mode nothing is rendered (the reconcile waits, saying which key); in
// audit mode the key is left out, and a rule left without keys too, and
// the condition says so.
func TestAMissingKeyIsNeverNoRule(t *testing.T) {
	rules := []depproxyv1.VerifyRule{
		keyRule([]string{"ghcr.io/our-org/**"}, "gone"),
		keyRule([]string{"docker.io/library/*"}, "present", "gone"),
	}
	problems := map[verifyKeyRef]string{{"gone", "cosign.pub"}: `Secret "gone" does not exist in namespace tenants`}

	for _, mode := range []depproxyv1.VerifyMode{depproxyv1.VerifyEnforce, ""} {
		v, err := renderVerify(verifyingProxy(mode, rules...), problems, nil, nil)
		var re *reconcileError
		if v != nil || !errors.As(err, &re) || re.Reason != depproxyv1.ReasonVerifyKeyMissing || re.retry != retryAfter ||
			!strings.Contains(re.Message, `Secret "gone"`) || !strings.Contains(re.Message, "spec.verify.rules[0].keys[0]") {
			t.Errorf("mode %q: a missing key rendered %v, %v", mode, v, err)
		}
	}

	dp := verifyingProxy(depproxyv1.VerifyAudit, rules...)
	v, err := renderVerify(dp, problems, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, dir := materialize(t, v, map[verifyKeyRef][]byte{{"present", "cosign.pub"}: cosignPub(t)})
	if _, err := verify.Parse(raw, dir); err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if strings.Contains(string(v.policy), "our-org") || !strings.Contains(string(v.policy), "present/cosign.pub") || strings.Contains(string(v.policy), "gone") {
		t.Errorf("audit policy without the missing key:\n%s", v.policy)
	}
	c := verifyConditions(dp, nil, v.dropped)
	if len(c.set) != 1 || c.set[0].Status != metav1.ConditionFalse || c.set[0].Reason != depproxyv1.ReasonVerifyKeyMissing ||
		!strings.Contains(c.set[0].Message, "rules[0].keys[0]") || !strings.Contains(c.set[0].Message, "rules[1].keys[1]") {
		t.Errorf("%+v", c)
	}
}

func TestVerifyKeyProblem(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)})
	ref := verifyKeyRef{"keys", "cosign.pub"}
	secret := func(data map[string][]byte) *corev1.Secret { return &corev1.Secret{Data: data} }
	for _, tc := range []struct {
		name   string
		secret *corev1.Secret
		want   string // in the problem; "" none
	}{
		{"no Secret", nil, `Secret "keys" does not exist in namespace ns`},
		{"no such key", secret(map[string][]byte{"cosign.key": []byte("x"), "a": nil}), `has no key "cosign.pub" (it has: a, cosign.key)`},
		{"not PEM", secret(map[string][]byte{"cosign.pub": []byte("hello")}), "not a PEM public key"},
		{"a private key", secret(map[string][]byte{"cosign.pub": pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: []byte("x")})}), "ENCRYPTED SIGSTORE PRIVATE KEY"},
		{"cosign.pub", secret(map[string][]byte{"cosign.pub": cosignPub(t)}), ""},
		{"an RSA key", secret(map[string][]byte{"cosign.pub": pkcs1}), ""},
	} {
		got := verifyKeyProblem(tc.secret, ref, "ns")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestVerifiedCondition(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	refusal := func(ago time.Duration, audited bool) depproxyv1.VerificationRefusal {
		return depproxyv1.VerificationRefusal{Image: "ghcr.io/org/app@sha256:ab", Rule: "rule 1 (ghcr.io/org/**)", Reason: "signed by another key",
			Audited: audited, At: metav1.NewTime(now.Add(-ago))}
	}
	summary := func(v *depproxyv1.VerificationSummary) *depproxyv1.CacheSummary {
		return &depproxyv1.CacheSummary{ReportedAt: metav1.NewTime(now), Verification: v}
	}
	enforcing := verifyingProxy(depproxyv1.VerifyEnforce, keyRule([]string{"ghcr.io/org/**"}, "k"))
	for _, tc := range []struct {
		name    string
		dp      *depproxyv1.DependencyProxy
		s       *depproxyv1.CacheSummary
		remove  bool
		status  metav1.ConditionStatus // "": nothing set
		reason  string
		message string
	}{
		{name: "no spec.verify", dp: testProxy(), s: summary(nil), remove: true},
		{name: "not read", dp: enforcing},
		{name: "an older proxy", dp: enforcing, s: summary(nil), status: metav1.ConditionUnknown, reason: depproxyv1.ReasonVerificationNotReported},
		{name: "all verified", dp: enforcing, s: summary(&depproxyv1.VerificationSummary{Verified: 3}),
			status: metav1.ConditionTrue, reason: depproxyv1.ReasonAllVerified, message: "3 verified, 0 refused"},
		{name: "refused now", dp: enforcing, s: summary(&depproxyv1.VerificationSummary{Verified: 3, Refused: 2, LastRefusals: []depproxyv1.VerificationRefusal{refusal(time.Minute, false), refusal(2*time.Minute, false)}}),
			status: metav1.ConditionFalse, reason: depproxyv1.ReasonImageRefused, message: "ghcr.io/org/app@sha256:ab refused at 2026-12-07T11:59:00Z by the policy's rule 1 (ghcr.io/org/**): signed by another key"},
		{name: "served in audit mode", dp: enforcing, s: summary(&depproxyv1.VerificationSummary{Audited: 1, LastRefusals: []depproxyv1.VerificationRefusal{refusal(time.Minute, true)}}),
			status: metav1.ConditionFalse, reason: depproxyv1.ReasonUnverifiedServed, message: "served unverified (audit mode)"},
		{name: "refused long ago", dp: enforcing, s: summary(&depproxyv1.VerificationSummary{Verified: 9, Refused: 1, LastRefusals: []depproxyv1.VerificationRefusal{refusal(2*time.Hour, false)}}),
			status: metav1.ConditionTrue, reason: depproxyv1.ReasonAllVerified, message: "9 verified, 1 refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := verifyConditions(tc.dp, tc.s, nil)
			if tc.remove != (len(c.remove) == 1 && c.remove[0] == depproxyv1.ConditionVerified) {
				t.Errorf("remove %v", c.remove)
			}
			if tc.status == "" {
				if len(c.set) != 0 {
					t.Errorf("set %+v", c.set)
				}
				return
			}
			var conds []metav1.Condition
			c.applyTo(&conds)
			got := meta.FindStatusCondition(conds, depproxyv1.ConditionVerified)
			if got == nil || got.Status != tc.status || got.Reason != tc.reason || !strings.Contains(got.Message, tc.message) {
				t.Errorf("%+v", got)
			}
		})
	}
}

// The proxy's report is bounded in the status whatever it sends.
func TestVerificationSummaryIsBounded(t *testing.T) {
	w := report.Summary{Verification: &report.VerifySummary{Verified: 1, Refused: 20, Audited: 3}}
	for range 20 {
		w.Verification.LastRefusals = append(w.Verification.LastRefusals, report.VerifyRefusal{Image: strings.Repeat("é", 600), Rule: "rule 1", Reason: "no signature", At: time.Now()})
	}
	s := toCacheSummary(w, metav1.Now()).Verification
	if s == nil || s.Verified != 1 || s.Refused != 20 || s.Audited != 3 || len(s.LastRefusals) != 10 || len(s.LastRefusals[0].Image) > 512 ||
		!strings.HasSuffix(s.LastRefusals[0].Image, "é") {
		t.Fatalf("%+v", s)
	}
	if toCacheSummary(report.Summary{}, metav1.Now()).Verification != nil {
		t.Error("a proxy without a policy has a verification summary")
	}
}

// The policy file is re-read by the proxy: a change of its images or
// mode alone does not roll the pods; spec.verify itself appearing does
// (the proxy reads --verify-policy when it starts).
func TestVerifyPolicyChangesDoNotRoll(t *testing.T) {
	hash := func(dp *depproxyv1.DependencyProxy) string {
		t.Helper()
		cm, err := desiredConfigMap(dp, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		v, err := renderVerify(dp, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cm, err = withVerify(cm, v); err != nil {
			t.Fatal(err)
		}
		return configHash(cm)
	}
	a := verifyingProxy(depproxyv1.VerifyAudit, keyRule([]string{"ghcr.io/org/**"}, "k"))
	b := verifyingProxy(depproxyv1.VerifyEnforce, keyRule([]string{"ghcr.io/org/**", "quay.io/org/**"}, "k"))
	if hash(a) != hash(b) {
		t.Error("a changed policy rolls the pods")
	}
	if hash(testProxy()) == hash(a) {
		t.Error("spec.verify added does not roll the pods")
	}
}

// A namespace admin pointing a rule at another namespace's Secret: a
// secretRef has no namespace (a strict client is refused, anyone else's
// field is pruned), the name is looked up in the cache's own namespace,
// and the victim's Secret is neither read into the cache nor mounted;
// the admin's own Secret of that name is.
func TestVerifyKeysStayInTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns, victim := namespace(t), namespace(t)
	mallory := asNamespaceAdmin(t, ns, "mallory-verify")
	victimKey := cosignPub(t)
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "release-key", Namespace: victim},
		Data: map[string][]byte{"cosign.pub": victimKey}}); err != nil {
		t.Fatal(err)
	}
	if canI(t, mallory, authorizationv1.ResourceAttributes{Namespace: victim, Verb: "get", Resource: "secrets"}) {
		t.Fatal("the namespace admin may read the other namespace's Secrets: the test proves nothing")
	}
	if err := mallory.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}}); err != nil {
		t.Fatal(err)
	}
	proxy := func(name string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "depproxy.dev/v1alpha1", "kind": "DependencyProxy",
			"metadata": map[string]any{"name": name, "namespace": ns}, "spec": map[string]any{
				"storage": map[string]any{"endpoint": "minio.storage:9000", "bucket": "cache", "prefix": ns + "/" + name,
					"credentialsSecretRef": map[string]any{"name": "minio"}},
				"verify": map[string]any{"rules": []any{map[string]any{"images": []any{"ghcr.io/org/**"},
					"keys": []any{map[string]any{"secretRef": map[string]any{"name": "release-key", "namespace": victim}}}}}}}}}
	}
	err := mallory.Create(ctx, proxy("strict"), client.FieldValidation("Strict"))
	if err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Errorf("a secretRef with a namespace, strictly validated, was not refused naming the field: %v", err)
	}
	if err := mallory.Create(ctx, proxy("theft")); err != nil {
		t.Fatal(err)
	}
	dp := &depproxyv1.DependencyProxy{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "theft"}, dp); err != nil {
		t.Fatal(err)
	}
	if ref := dp.Spec.Verify.Rules[0].Keys[0].SecretRef; ref.Name != "release-key" || ref.Key != "cosign.pub" {
		t.Fatalf("secretRef as stored: %+v", ref)
	}
	raw, _ := json.Marshal(dp.Spec.Verify)
	if bytes.Contains(raw, []byte(victim)) {
		t.Fatalf("the other namespace is kept in the spec: %s", raw)
	}

	// The operator looks in the cache's namespace only.
	before := snapshot(t)
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonVerifyKeyMissing)
	if !strings.Contains(c.Message, `Secret "release-key" does not exist in namespace `+ns) {
		t.Errorf("the message does not say where the key was looked for: %q", c.Message)
	}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "theft-depproxy"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a cache whose enforce policy lacks its key was rolled out: %v", err)
	}

	// The tenant's own Secret of that name is the one used.
	own := cosignPub(t)
	if err := mallory.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "release-key", Namespace: ns},
		Data: map[string][]byte{"cosign.pub": own}}); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	d, cm := &appsv1.Deployment{}, &corev1.ConfigMap{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "theft-depproxy"}, d); err != nil {
		t.Fatal(err)
	}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "theft-depproxy"}, cm)
	if !strings.Contains(cm.Data[verifyPolicyKey], verifyKeysDir+"/release-key/cosign.pub") {
		t.Errorf("the policy:\n%s", cm.Data[verifyPolicyKey])
	}
	secrets, _ := projectedInto(d)
	if len(secrets) != 1 {
		t.Errorf("%d Secrets projected into the pods (which only ever see their own namespace's)", len(secrets))
	}
	for _, src := range secrets {
		if src.Name != "release-key" || len(src.Items) != 1 || src.Items[0].Key != "cosign.pub" {
			t.Errorf("projected %+v", src)
		}
	}
	for key, o := range snapshot(t) {
		if _, old := before[key]; old {
			continue
		}
		if o.GetNamespace() != ns {
			t.Errorf("%T %s/%s made or changed outside the tenant's namespace", o, o.GetNamespace(), o.GetName())
		}
		if s, ok := o.(*corev1.Secret); ok {
			for _, v := range s.Data {
				if bytes.Equal(v, victimKey) {
					t.Errorf("the other namespace's key was copied into Secret %s/%s", s.Namespace, s.Name)
				}
			}
		}
	}
}

// The cache's verifications reach the status, and the Verified
// condition names the last refusal, until none is recent.
func TestVerificationStatus(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "org-key", Namespace: ns},
		Data: map[string][]byte{"cosign.pub": cosignPub(t)}}); err != nil {
		t.Fatal(err)
	}
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "signed", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Verify:  &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{keyRule([]string{"ghcr.io/org/**"}, "org-key")}},
	}}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	var served report.Summary
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != report.SummaryPath {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(served)
	}))
	t.Cleanup(srv.Close)
	r, _ := newProxyReconciler(k8sClient)
	r.Summaries = HTTPSummaries{BaseURL: func(*depproxyv1.DependencyProxy) string { return srv.URL }}
	reconcileProxy(t, r, dp)
	markAvailable(t, ns, "signed-depproxy", 1)

	refused := report.VerifyRefusal{Image: "ghcr.io/org/app@sha256:0123", Rule: "rule 1 (ghcr.io/org/**)", Reason: "signed by another key", At: time.Now().Add(-time.Minute)}
	served = report.Summary{Verification: &report.VerifySummary{Verified: 4, Refused: 1, LastRefusals: []report.VerifyRefusal{refused}}}
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	v := dp.Status.Cache.Verification
	if v == nil || v.Verified != 4 || v.Refused != 1 || len(v.LastRefusals) != 1 || v.LastRefusals[0].Image != refused.Image || v.LastRefusals[0].Reason != refused.Reason {
		t.Fatalf("status.cache.verification: %+v", v)
	}
	c := assertCondition(t, dp, depproxyv1.ConditionVerified, metav1.ConditionFalse, depproxyv1.ReasonImageRefused)
	for _, want := range []string{refused.Image, refused.Rule, refused.Reason} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("the condition does not say %q: %q", want, c.Message)
		}
	}
	assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonAvailable)

	refused.At = time.Now().Add(-2 * time.Hour)
	served.Verification.LastRefusals = []report.VerifyRefusal{refused}
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	assertCondition(t, dp, depproxyv1.ConditionVerified, metav1.ConditionTrue, depproxyv1.ReasonAllVerified)

	// spec.verify removed: the condition goes, and the policy with it.
	dp.Spec.Verify = nil
	if err := k8sClient.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	if meta.FindStatusCondition(dp.Status.Conditions, depproxyv1.ConditionVerified) != nil {
		t.Error("Verified stays without spec.verify")
	}
	cm := &corev1.ConfigMap{}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "signed-depproxy"}, cm)
	if _, ok := cm.Data[verifyPolicyKey]; ok || strings.Contains(cm.Data[configKey], "verify-policy") {
		t.Errorf("the policy stays without spec.verify: %v", cm.Data)
	}
}

// spec.verify's mistakes are refused by the API server, with a message
// naming them.
func TestInvalidVerifySpecsAreRefused(t *testing.T) {
	ns := namespace(t)
	withVerify := func(v *depproxyv1.VerifySpec) *depproxyv1.DependencyProxy {
		return &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{GenerateName: "verify-", Namespace: ns},
			Spec: depproxyv1.DependencyProxySpec{Verify: v, Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "s"}}}}
	}
	rule := func(images ...string) depproxyv1.VerifyRule { return keyRule(images, "k") }
	for _, tc := range []struct {
		name string
		v    *depproxyv1.VerifySpec
		want string
	}{
		{"no rules", &depproxyv1.VerifySpec{}, "spec.verify.rules"},
		{"an unknown mode", &depproxyv1.VerifySpec{Mode: "warn", Rules: []depproxyv1.VerifyRule{rule("ghcr.io/org/**")}}, "spec.verify.mode"},
		{"no images", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{rule()}}, "spec.verify.rules[0].images"},
		{"no keys", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{keyRule([]string{"ghcr.io/org/**"})}}, "exactly one of keys, keyless"},
		{"keys and keyless", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{withKeyless(rule("ghcr.io/org/**"), keyless("x", "", "y", ""))}}, "exactly one of keys, keyless"},
		{"keyless, issuer twice", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "^x$", "y", ""))}}, "exactly one of issuer, issuerRegExp"},
		{"keyless, no subject", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "", "", ""))}}, "exactly one of subject, subjectRegExp"},
		{"keyless without its log", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "", "y", ""))
			r.IgnoreTlog = true
			return r
		}()}}, "ignoreTlog is for key rules"},
		{"a trusted root's key climbing out", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "", "y", ""))
			r.Keyless.TrustedRootRef.Key = "..data"
			return r
		}()}}, "may not be . or begin with .."},
		{"a tag", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{rule("ghcr.io/org/app:latest")}}, "not tags"},
		{"a digest", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{rule("ghcr.io/org/app@sha256:ab")}}, "spec.verify.rules[0].images[0]"},
		{"a key climbing out", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{keyRule([]string{"ghcr.io/org/**"}, "k/..data")}}, "may not be . or begin with .."},
		{"a key with a slash", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{{Images: []string{"ghcr.io/org/**"},
			Keys: []depproxyv1.VerifyKey{{SecretRef: depproxyv1.SecretKeyRef{Name: "k", Key: "a/b"}}}}}}, "secretRef.key"},
		{"a Secret's name with a slash", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{{Images: []string{"ghcr.io/org/**"},
			Keys: []depproxyv1.VerifyKey{{SecretRef: depproxyv1.SecretKeyRef{Name: "other-ns/k"}}}}}}, "secretRef.name"},
		{"keys and notation", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := rule("ghcr.io/org/**")
			r.Notation = notationRule(nil, "certs", "", "policy", "").Notation
			return r
		}()}}, "exactly one of keys, keyless, notation"},
		{"keyless and notation", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "", "y", ""))
			r.Notation = notationRule(nil, "certs", "", "policy", "").Notation
			return r
		}()}}, "exactly one of keys, keyless, notation"},
		{"notation without its log", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := notationRule([]string{"ghcr.io/org/**"}, "certs", "", "policy", "")
			r.IgnoreTlog = true
			return r
		}()}}, "ignoreTlog is for key rules"},
		{"a notation rule's trusted root", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := notationRule([]string{"ghcr.io/org/**"}, "certs", "", "policy", "")
			r.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "root"}
			return r
		}()}}, "trustedRootRef is for key rules"},
		{"a keyless rule's second trusted root", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("x", "", "y", ""))
			r.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "root"}
			return r
		}()}}, "trustedRootRef is for key rules"},
		{"a trusted root and ignoreTlog", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := rule("ghcr.io/org/**")
			r.TrustedRootRef, r.IgnoreTlog = &depproxyv1.ConfigMapKeyRef{Name: "root"}, true
			return r
		}()}}, "ignoreTlog and trustedRootRef: one or the other"},
		{"a key rule's trusted root climbing out", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{func() depproxyv1.VerifyRule {
			r := rule("ghcr.io/org/**")
			r.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "root", Key: ".."}
			return r
		}()}}, "may not be . or begin with .."},
		{"a store name with a slash", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			notationRule([]string{"ghcr.io/org/**"}, "certs", "ca/evil", "policy", "")}}, "trustStoreRef.storeName"},
		{"a store name climbing out", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			notationRule([]string{"ghcr.io/org/**"}, "certs", "..", "policy", "")}}, "a trust store's name may not be . or begin with .."},
		{"a trust store's ConfigMap in another namespace", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			notationRule([]string{"ghcr.io/org/**"}, "other-ns/certs", "", "policy", "")}}, "trustStoreRef.name"},
		{"a trust policy's key climbing out", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			notationRule([]string{"ghcr.io/org/**"}, "certs", "", "policy", "..data")}}, "may not be . or begin with .."},
		{"a trust policy without its ConfigMap", &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			notationRule([]string{"ghcr.io/org/**"}, "certs", "", "", "")}}, "trustPolicyRef.name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := k8sClient.Create(context.Background(), withVerify(tc.v))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.want)
			}
		})
	}
	rooted := rule("quay.io/org/**")
	rooted.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "sigstore-root"}
	ok := withVerify(&depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{rule("localhost:5000/org/**", "nginx", "docker.io/library/*"),
		withKeyless(keyRule([]string{"ghcr.io/org/**"}), keyless("https://token.actions.githubusercontent.com", "", "", "^https://github.com/org/")),
		notationRule([]string{"registry.example/**"}, "notation-certs", "", "notation-policy", ""),
		notationRule([]string{"registry.example/prod/**"}, "notation-certs", "prod_2026.x", "notation-policy", "prod.json"),
		rooted}})
	if err := k8sClient.Create(context.Background(), ok); err != nil {
		t.Fatalf("a valid spec.verify was refused: %v", err)
	}
	if ok.Spec.Verify.Mode != depproxyv1.VerifyEnforce || ok.Spec.Verify.Rules[0].Keys[0].SecretRef.Key != "cosign.pub" ||
		ok.Spec.Verify.Rules[1].Keyless.TrustedRootRef.Key != "trusted_root.json" ||
		ok.Spec.Verify.Rules[2].Notation.TrustPolicyRef.Key != "trustpolicy.json" || ok.Spec.Verify.Rules[2].Notation.TrustStoreRef.StoreName != "" ||
		ok.Spec.Verify.Rules[4].TrustedRootRef.Key != "trusted_root.json" {
		t.Errorf("defaults: %+v", ok.Spec.Verify)
	}
}

// The real proxy, run as the operator rendered it with spec.verify in
// enforce mode, refuses an unsigned image naming the rule and the
// reason; its own summary brings the refusal to the status and the
// Verified condition. A keyless rule's trusted root, projected from its
// ConfigMap, is loaded by the proxy, whose keyless rule refuses an
// unsigned image too; so is a key rule's. A notation rule's trust store
// and trust policy, projected from theirs, let an image signed with
// notation through and refuse an unsigned one.
func TestRenderedVerifyPolicyRefuses(t *testing.T) {
	cluster(t)
	ctx := context.Background()
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	m := testenv.StartMinIO(t)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"library/unsigned", "keyless/unsigned", "notation/unsigned"} {
		ref, _ := name.ParseReference(reg.Addr+"/"+repo+":1.0", name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	signedImg, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	signedRef, _ := name.ParseReference(reg.Addr+"/notation/signed:1.0", name.Insecure)
	if err := remote.Write(signedRef, signedImg); err != nil {
		t.Fatal(err)
	}
	signedDigest, _ := signedImg.Digest()
	certs, cas := notationCerts(t, "notation-certs", "acme")
	cas[0].Sign(t, reg.Addr, "notation/signed", signedDigest.String())

	ns := namespace(t)
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey})
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "org-key", Namespace: ns},
		Data: map[string][]byte{"cosign.pub": cosignPub(t)}}); err != nil {
		t.Fatal(err)
	}
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "signed", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Upstream: depproxyv1.UpstreamSpec{URL: front.URL()},
		Storage: depproxyv1.StorageSpec{Endpoint: m.Addr, Bucket: "verify-cache", Prefix: "signed", Insecure: true,
			CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Verify: &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{keyRule([]string{front.Addr + "/library/**"}, "org-key"),
			withKeyless(depproxyv1.VerifyRule{Images: []string{front.Addr + "/keyless/**"}}, keyless("https://issuer.example", "", "", "@example.com$")),
			notationRule([]string{front.Addr + "/notation/**"}, "notation-certs", "", "notation-policy", "")}},
	}}
	dp.Spec.Verify.Rules[0].TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "sigstore-root"}
	certs.Namespace = ns
	if err := k8sClient.Create(ctx, certs); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "notation-policy", Namespace: ns},
		Data: map[string]string{"trustpolicy.json": notationPolicy(t, "ca:notation-certs")}}); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sigstore-root", Namespace: ns},
		Data: map[string]string{"trusted_root.json": string(sigstoretest.New(t).TrustedRoot(t))}}); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	proxyAddr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	r, _ := newProxyReconciler(k8sClient)
	r.Summaries = HTTPSummaries{BaseURL: func(*depproxyv1.DependencyProxy) string { return "http://" + opsAddr }}
	reconcileProxy(t, r, dp)
	logs := runRendered(t, ns, "signed-depproxy", proxyAddr, opsAddr)

	var status int
	var body []byte
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + proxyAddr + "/v2/library/unsigned/manifests/1.0")
		if err == nil {
			status = resp.StatusCode
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		if i > 100 {
			t.Fatalf("the rendered proxy does not serve: %v\nits log:\n%s", err, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status != http.StatusForbidden || !strings.Contains(string(body), "DENIED") || !strings.Contains(string(body), "no signature") ||
		!strings.Contains(string(body), "rule 1") {
		t.Fatalf("an unsigned image in enforce mode: %d %s\nproxy log:\n%s", status, body, logs)
	}

	markAvailable(t, ns, "signed-depproxy", 1)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	if dp.Status.Cache == nil || dp.Status.Cache.Verification == nil || dp.Status.Cache.Verification.Refused != 1 ||
		len(dp.Status.Cache.Verification.LastRefusals) != 1 {
		t.Fatalf("status.cache: %+v\nproxy log:\n%s", dp.Status.Cache, logs)
	}
	c := assertCondition(t, dp, depproxyv1.ConditionVerified, metav1.ConditionFalse, depproxyv1.ReasonImageRefused)
	if !strings.Contains(c.Message, "library/unsigned@sha256:") || !strings.Contains(c.Message, "no signature") {
		t.Errorf("the condition does not name the image and the reason: %q", c.Message)
	}

	resp, err := http.Get("http://" + proxyAddr + "/v2/keyless/unsigned/manifests/1.0")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "rule 2") || !strings.Contains(string(body), "no signature") {
		t.Errorf("an unsigned image under the keyless rule: %s %s\nproxy log:\n%s", resp.Status, body, logs)
	}

	for _, c := range []struct {
		repo   string
		status int
		want   string
	}{
		{"notation/signed", http.StatusOK, ""},
		{"notation/unsigned", http.StatusForbidden, "no notation signature"},
	} {
		resp, err := http.Get("http://" + proxyAddr + "/v2/" + c.repo + "/manifests/1.0")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(body), c.want) || (c.want != "" && !strings.Contains(string(body), "rule 3")) {
			t.Errorf("%s under the notation rule: %s %s\nproxy log:\n%s", c.repo, resp.Status, body, logs)
		}
	}
}

// Keyless rules are rendered as the proxy reads them, each trusted root
// projected from its ConfigMap where the policy names it (only the keys
// named, each once, trusted_root.json by default). A missing root waits
// in enforce mode and leaves its rule out in audit mode; a regular
// expression Go does not compile stalls.
func TestVerifyKeylessPolicyIsReadAsTheProxyReadsIt(t *testing.T) {
	root := sigstoretest.New(t).TrustedRoot(t)
	pub := cosignPub(t)
	staging := keyless("", "^https://token\\.", "", "^https://github.com/org/")
	staging.TrustedRootRef.Key = "staging.json"
	dp := verifyingProxy(depproxyv1.VerifyEnforce,
		withKeyless(keyRule([]string{"docker.io/library/*"}), keyless("https://token.actions.githubusercontent.com", "", "https://github.com/docker-library/x", "")),
		withKeyless(keyRule([]string{"ghcr.io/org/**"}), staging),
		keyRule([]string{"quay.io/org/**"}, "org-key"),
		withKeyless(keyRule([]string{"registry.example/**"}), keyless("https://issuer.example", "", "", "@example.com$")))
	v, err := renderVerify(dp, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.roots) != 2 || len(v.keys) != 1 || len(v.dropped) != 0 {
		t.Fatalf("roots %v keys %v dropped %v", v.roots, v.keys, v.dropped)
	}
	vol := verifyRootsVolume(v)
	if vol == nil || len(vol.Projected.Sources) != 1 || vol.Projected.Sources[0].ConfigMap == nil ||
		vol.Projected.Sources[0].ConfigMap.Name != "sigstore-root" || len(vol.Projected.Sources[0].ConfigMap.Items) != 2 {
		t.Fatalf("one source per ConfigMap, each key once: %+v", vol)
	}

	// What the pod sees: the roots and the key where the volumes put
	// them, read by the proxy's own parser.
	raw, dir := materialize(t, v, map[verifyKeyRef][]byte{{"org-key", "cosign.pub"}: pub})
	rootsDir := t.TempDir()
	for _, it := range vol.Projected.Sources[0].ConfigMap.Items {
		p := filepath.Join(rootsDir, it.Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, root, 0o644)
	}
	raw = []byte(strings.ReplaceAll(string(raw), verifyRootsDir, rootsDir))
	p, err := verify.Parse(raw, dir)
	if err != nil {
		t.Fatalf("the proxy refuses the rendered policy: %v\n%s", err, raw)
	}
	if p.Mode != verify.Enforce {
		t.Errorf("mode %s", p.Mode)
	}
	policyHas(t, v.policy, "issuer: https://token.actions.githubusercontent.com", "subject: https://github.com/docker-library/x",
		"issuerRegExp: ^https://token\\.", "subjectRegExp: '@example.com$'",
		"file: "+verifyRootsDir+"/sigstore-root/trusted_root.json", "file: "+verifyRootsDir+"/sigstore-root/staging.json")

	// Wired: the pods mount the roots beside the keys.
	d := desiredDeployment(dp, "img", "", "", "")
	mountVerifyKeys(d, v)
	mounts := readOnlyMounts(d)
	if mounts["verify-roots"] != verifyRootsDir || mounts["verify-keys"] != verifyKeysDir {
		t.Errorf("mounts %v", mounts)
	}

	// A root missing: enforce waits, naming it; audit leaves its rule out.
	missing := map[verifyRootRef]string{{"sigstore-root", "staging.json"}: `ConfigMap "sigstore-root" has no key "staging.json"`}
	_, err = renderVerify(dp, nil, missing, nil)
	var re *reconcileError
	if !errors.As(err, &re) || re.Reason != depproxyv1.ReasonVerifyKeyMissing || re.retry != retryAfter ||
		!strings.Contains(re.Message, "spec.verify.rules[1].keyless.trustedRootRef") || !strings.Contains(re.Message, "staging.json") {
		t.Errorf("a missing root in enforce mode: %v", err)
	}
	dp.Spec.Verify.Mode = depproxyv1.VerifyAudit
	v, err = renderVerify(dp, nil, missing, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(v.policy), "ghcr.io") || strings.Contains(string(v.policy), "staging.json") || len(v.dropped) != 1 || len(v.roots) != 1 {
		t.Errorf("audit policy without the missing root (dropped %v):\n%s", v.dropped, v.policy)
	}

	// A regular expression the proxy would not load.
	dp.Spec.Verify.Rules[3].Keyless.SubjectRegExp = "("
	if _, err := renderVerify(dp, nil, nil, nil); !errors.As(err, &re) || re.Reason != depproxyv1.ReasonInvalidSettings || re.retry != retryNever ||
		!strings.Contains(re.Message, "spec.verify.rules[3].keyless.subjectRegExp") {
		t.Errorf("a bad regular expression: %v", err)
	}
}

func TestVerifyRootProblem(t *testing.T) {
	ref := verifyRootRef{"roots", "trusted_root.json"}
	cm := func(data map[string]string, binary map[string][]byte) *corev1.ConfigMap {
		return &corev1.ConfigMap{Data: data, BinaryData: binary}
	}
	for _, tc := range []struct {
		name string
		cm   *corev1.ConfigMap
		want string // in the problem; "" none
	}{
		{"no ConfigMap", nil, `ConfigMap "roots" does not exist in namespace ns`},
		{"no such key", cm(map[string]string{"a": "{}"}, map[string][]byte{"b": nil}), `has no key "trusted_root.json" (it has: a, b)`},
		{"not JSON", cm(map[string]string{"trusted_root.json": "hello"}, nil), "is not a trusted root"},
		{"a JSON list", cm(map[string]string{"trusted_root.json": "[]"}, nil), "is not a trusted root"},
		{"a trusted root", cm(map[string]string{"trusted_root.json": string(sigstoretest.New(t).TrustedRoot(t))}, nil), ""},
		{"as binary data", cm(nil, map[string][]byte{"trusted_root.json": []byte(`{"mediaType":"x"}`)}), ""},
	} {
		if got := verifyRootProblem(tc.cm, ref, "ns"); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A keyless rule's trusted root is read from the cache's own namespace
// only: a ConfigMap of that name elsewhere is never used; without one
// here an enforce policy waits, naming where it looked; with one, its
// key alone is projected into the pods and named by the policy.
func TestVerifyTrustedRootsStayInTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns, other := namespace(t), namespace(t)
	root := sigstoretest.New(t).TrustedRoot(t)
	if err := k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sigstore-root", Namespace: other},
		Data: map[string]string{"trusted_root.json": string(root)}}); err != nil {
		t.Fatal(err)
	}
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "keyless", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Verify: &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{
			withKeyless(depproxyv1.VerifyRule{Images: []string{"docker.io/library/*"}}, keyless("https://token.actions.githubusercontent.com", "", "", "^https://github.com/docker-library/"))}}}}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonVerifyKeyMissing)
	if !strings.Contains(c.Message, `ConfigMap "sigstore-root" does not exist in namespace `+ns) || !strings.Contains(c.Message, "keyless.trustedRootRef") {
		t.Errorf("the message does not say where the root was looked for: %q", c.Message)
	}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keyless-depproxy"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a cache whose enforce policy lacks its trusted root was rolled out: %v", err)
	}

	if err := k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sigstore-root", Namespace: ns},
		Data: map[string]string{"trusted_root.json": string(root), "unrelated": "x"}}); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	d, cm := &appsv1.Deployment{}, &corev1.ConfigMap{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keyless-depproxy"}, d); err != nil {
		t.Fatal(err)
	}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keyless-depproxy"}, cm)
	if !strings.Contains(cm.Data[verifyPolicyKey], verifyRootsDir+"/sigstore-root/trusted_root.json") ||
		!strings.Contains(cm.Data[verifyPolicyKey], "subjectRegExp: ^https://github.com/docker-library/") {
		t.Errorf("the policy:\n%s", cm.Data[verifyPolicyKey])
	}
	_, configMaps := projectedInto(d)
	if len(configMaps) != 1 {
		t.Errorf("%d ConfigMaps projected into the pods, want the trusted root's", len(configMaps))
	}
	for _, src := range configMaps {
		if src.Name != "sigstore-root" || len(src.Items) != 1 || src.Items[0].Key != "trusted_root.json" {
			t.Errorf("projected %+v", src)
		}
	}
}

// projectedInto is what d's pods get through projected volumes.
func projectedInto(d *appsv1.Deployment) (secrets []corev1.SecretProjection, configMaps []corev1.ConfigMapProjection) {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.Secret != nil {
				secrets = append(secrets, *src.Secret)
			}
			if src.ConfigMap != nil {
				configMaps = append(configMaps, *src.ConfigMap)
			}
		}
	}
	return secrets, configMaps
}

// notationCerts is a trust store's ConfigMap: a test CA's certificate
// (and, with more names, more CAs'), a key each.
func notationCerts(t *testing.T, name string, cas ...string) (*corev1.ConfigMap, []*notationtest.CA) {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{}}
	var out []*notationtest.CA
	for _, n := range cas {
		ca := notationtest.New(t, n, notationtest.Options{})
		cm.Data[n+".pem"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}))
		out = append(out, ca)
	}
	return cm, out
}

// notationPolicy is a trust policy, as notation's trustpolicy.json,
// trusting the stores named for every image.
func notationPolicy(t *testing.T, stores ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trustpolicy.json")
	notationtest.WriteTrustPolicy(t, path, notationtest.Statement{Name: "all", Scopes: []string{"*"}, Stores: stores})
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func notationRule(images []string, store, storeName, policy, key string) depproxyv1.VerifyRule {
	return depproxyv1.VerifyRule{Images: images, Notation: &depproxyv1.VerifyNotation{
		TrustStoreRef:  depproxyv1.NotationTrustStoreRef{Name: store, StoreName: storeName},
		TrustPolicyRef: depproxyv1.TrustPolicyRef{Name: policy, Key: key}}}
}

// materializeConfigMaps writes vol's ConfigMap items where the
// projected volume puts them, under a new directory, from cms.
func materializeConfigMaps(t *testing.T, vol *corev1.Volume, cms ...*corev1.ConfigMap) string {
	t.Helper()
	dir := t.TempDir()
	if vol == nil {
		return dir
	}
	byName := map[string]*corev1.ConfigMap{}
	for _, cm := range cms {
		byName[cm.Name] = cm
	}
	for _, src := range vol.Projected.Sources {
		cm := byName[src.ConfigMap.Name]
		if cm == nil {
			t.Fatalf("the volume projects ConfigMap %s, which the test has not", src.ConfigMap.Name)
		}
		for _, it := range src.ConfigMap.Items {
			raw, ok := configMapValue(cm, it.Key)
			if !ok {
				t.Fatalf("the volume projects %s/%s, which is not there", cm.Name, it.Key)
			}
			p := filepath.Join(dir, it.Path)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// Notation rules and a key rule's trusted root are rendered as the
// proxy reads them: each trust store's ConfigMap projected as notation
// lays out its trust store (x509/ca/STORE/KEY, every key a
// certificate, the store named after the ConfigMap unless storeName
// says otherwise), each trust policy and trusted root where the policy
// names it. A missing or wrong one waits in enforce mode and leaves its
// rule out in audit mode.
func TestVerifyNotationPolicyIsReadAsTheProxyReadsIt(t *testing.T) {
	certs, _ := notationCerts(t, "notation-certs", "acme", "acme-2024")
	policies := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "notation-policy"}, Data: map[string]string{
		"trustpolicy.json": notationPolicy(t, "ca:notation-certs"), "prod.json": notationPolicy(t, "ca:prod")}}
	roots := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sigstore-root"}, Data: map[string]string{
		"trusted_root.json": string(sigstoretest.New(t).TrustedRoot(t))}}
	keyed := keyRule([]string{"quay.io/org/**"}, "org-key")
	keyed.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "sigstore-root"}
	dp := verifyingProxy(depproxyv1.VerifyEnforce,
		notationRule([]string{"registry.example/**"}, "notation-certs", "", "notation-policy", ""),
		notationRule([]string{"registry.example:5000/prod/**"}, "notation-certs", "prod", "notation-policy", "prod.json"),
		keyed)
	cms := map[string]*corev1.ConfigMap{"notation-certs": certs, "notation-policy": policies}
	v, err := renderVerify(dp, nil, nil, cms)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.stores) != 2 || len(v.roots) != 3 || len(v.keys) != 1 || len(v.dropped) != 0 {
		t.Fatalf("stores %v roots %v keys %v dropped %v", v.stores, v.roots, v.keys, v.dropped)
	}
	stores := verifyStoresVolume(v)
	if stores == nil || len(stores.Projected.Sources) != 1 || stores.Projected.Sources[0].ConfigMap.Name != "notation-certs" {
		t.Fatalf("one source per ConfigMap: %+v", stores)
	}
	var paths []string
	for _, it := range stores.Projected.Sources[0].ConfigMap.Items {
		paths = append(paths, it.Key+" "+it.Path)
	}
	if want := []string{"acme-2024.pem notation-certs/x509/ca/notation-certs/acme-2024.pem", "acme.pem notation-certs/x509/ca/notation-certs/acme.pem",
		"acme-2024.pem notation-certs/x509/ca/prod/acme-2024.pem", "acme.pem notation-certs/x509/ca/prod/acme.pem"}; !slices.Equal(paths, want) {
		t.Errorf("trust store items:\n%s\nwant\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}

	// What the pod sees, read by the proxy's own parser.
	raw, dir := materialize(t, v, map[verifyKeyRef][]byte{{"org-key", "cosign.pub"}: cosignPub(t)})
	rootsDir := materializeConfigMaps(t, verifyRootsVolume(v), policies, roots)
	storesDir := materializeConfigMaps(t, stores, certs)
	policy := strings.ReplaceAll(strings.ReplaceAll(string(raw), verifyRootsDir, rootsDir), verifyStoresDir, storesDir)
	if _, err := verify.Parse([]byte(policy), dir); err != nil {
		t.Fatalf("the proxy refuses the rendered policy: %v\n%s", err, policy)
	}
	policyHas(t, v.policy, "trustStore: "+verifyStoresDir+"/notation-certs\n", "trustPolicy: "+verifyRootsDir+"/notation-policy/trustpolicy.json",
		"trustPolicy: "+verifyRootsDir+"/notation-policy/prod.json", "file: "+verifyRootsDir+"/sigstore-root/trusted_root.json")
	d := desiredDeployment(dp, "img", "", "", "")
	mountVerifyKeys(d, v)
	mounts := readOnlyMounts(d)
	if mounts["verify-truststores"] != verifyStoresDir || mounts["verify-roots"] != verifyRootsDir {
		t.Errorf("mounts %v", mounts)
	}

	// Missing or wrong: enforce waits, naming the rule and the reference;
	// audit leaves the rule out.
	wrongKey := certs.DeepCopy()
	wrongKey.Data["trustpolicy.json"] = policies.Data["trustpolicy.json"]
	otherStore := policies.DeepCopy()
	otherStore.Data["trustpolicy.json"] = notationPolicy(t, "ca:elsewhere")
	for _, tc := range []struct {
		name         string
		cms          map[string]*corev1.ConfigMap
		rootProblems map[verifyRootRef]string
		want         string
		drops        int // rules left out in audit mode
	}{
		{"no trust store", map[string]*corev1.ConfigMap{"notation-policy": policies}, nil,
			`spec.verify.rules[0].notation.trustStoreRef: ConfigMap "notation-certs" does not exist in namespace tenants`, 2},
		{"a key that is no certificate", map[string]*corev1.ConfigMap{"notation-certs": wrongKey, "notation-policy": policies}, nil,
			`rules[0].notation.trustStoreRef: ConfigMap "notation-certs" key "trustpolicy.json" is not a PEM certificate`, 2},
		{"no trust policy", map[string]*corev1.ConfigMap{"notation-certs": certs, "notation-policy": nil}, nil,
			`spec.verify.rules[0].notation.trustPolicyRef: ConfigMap "notation-policy" does not exist`, 2},
		{"a store the pods do not have", map[string]*corev1.ConfigMap{"notation-certs": certs, "notation-policy": otherStore}, nil,
			`names trust store "ca:elsewhere", and the rule's trust store is ca:notation-certs`, 1},
		{"no trusted root for the key rule", cms, map[verifyRootRef]string{{"sigstore-root", "trusted_root.json"}: `ConfigMap "sigstore-root" does not exist`},
			`spec.verify.rules[2].trustedRootRef: ConfigMap "sigstore-root" does not exist`, 1},
	} {
		dp.Spec.Verify.Mode = depproxyv1.VerifyEnforce
		_, err := renderVerify(dp, nil, tc.rootProblems, tc.cms)
		var re *reconcileError
		if !errors.As(err, &re) || re.Reason != depproxyv1.ReasonVerifyKeyMissing || re.retry != retryAfter || !strings.Contains(re.Message, tc.want) {
			t.Errorf("%s, enforce: %v, want a wait naming %q", tc.name, err, tc.want)
		}
		dp.Spec.Verify.Mode = depproxyv1.VerifyAudit
		v, err := renderVerify(dp, nil, tc.rootProblems, tc.cms)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.dropped) != tc.drops || !strings.Contains(v.dropped[0], strings.TrimPrefix(tc.want, "spec.verify.")) {
			t.Errorf("%s, audit: dropped %v", tc.name, v.dropped)
		}
		var p struct {
			Rules []map[string]any `json:"rules"`
		}
		if err := yaml.Unmarshal(v.policy, &p); err != nil || len(p.Rules) != 3-tc.drops {
			t.Errorf("%s, audit: the rule is not left out whole (%v):\n%s", tc.name, err, v.policy)
		}
	}
}

func TestVerifyStoreKeys(t *testing.T) {
	certs, _ := notationCerts(t, "certs", "a", "b")
	ref := verifyStoreRef{"certs", "certs"}
	key := string(cosignPub(t))
	for _, tc := range []struct {
		name string
		cm   *corev1.ConfigMap
		keys []string
		want string // in the problem; "" none
	}{
		{"no ConfigMap", nil, nil, `ConfigMap "certs" does not exist in namespace ns`},
		{"empty", &corev1.ConfigMap{}, nil, "holds no certificates"},
		{"certificates", certs, []string{"a.pem", "b.pem"}, ""},
		{"a chain in one key", &corev1.ConfigMap{Data: map[string]string{"ca.pem": certs.Data["a.pem"] + certs.Data["b.pem"]}}, []string{"ca.pem"}, ""},
		{"binary", &corev1.ConfigMap{BinaryData: map[string][]byte{"ca.pem": []byte(certs.Data["a.pem"])}}, []string{"ca.pem"}, ""},
		{"a public key", &corev1.ConfigMap{Data: map[string]string{"a.pem": certs.Data["a.pem"], "cosign.pub": key}}, nil,
			`key "cosign.pub" is not a PEM certificate (a PEM PUBLIC KEY)`},
		{"not PEM", &corev1.ConfigMap{Data: map[string]string{"ca.crt": "hello"}}, nil, `key "ca.crt" is not a PEM certificate (not PEM)`},
	} {
		keys, got := verifyStoreKeys(tc.cm, ref, "ns")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) || !slices.Equal(keys, tc.keys) {
			t.Errorf("%s: %v %q, want %v %q", tc.name, keys, got, tc.keys, tc.want)
		}
	}
}

// A notation rule's trust store and trust policy, and a key rule's
// trusted root, are read from the cache's own namespace only:
// ConfigMaps of those names elsewhere are never used; without them here
// an enforce policy waits, naming where it looked; with them, they are
// projected into the pods and named by the policy.
func TestVerifyNotationStaysInTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns, other := namespace(t), namespace(t)
	certs, _ := notationCerts(t, "notation-certs", "acme")
	policies := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "notation-policy"}, Data: map[string]string{
		"trustpolicy.json": notationPolicy(t, "ca:notation-certs")}}
	roots := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "sigstore-root"}, Data: map[string]string{
		"trusted_root.json": string(sigstoretest.New(t).TrustedRoot(t))}}
	create := func(namespace string, objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			o = o.DeepCopyObject().(client.Object)
			o.SetNamespace(namespace)
			if err := k8sClient.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	create(other, certs, policies, roots)
	create(ns, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "org-key"}, Data: map[string][]byte{"cosign.pub": cosignPub(t)}})
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	keyed := keyRule([]string{"quay.io/org/**"}, "org-key")
	keyed.TrustedRootRef = &depproxyv1.ConfigMapKeyRef{Name: "sigstore-root"}
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "notation", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Verify: &depproxyv1.VerifySpec{Rules: []depproxyv1.VerifyRule{keyed,
			notationRule([]string{"registry.example/**"}, "notation-certs", "", "notation-policy", "")}}}}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	for _, step := range []struct {
		want string
		then []client.Object
	}{
		{`spec.verify.rules[0].trustedRootRef: ConfigMap "sigstore-root" does not exist in namespace ` + ns, []client.Object{roots}},
		{`spec.verify.rules[1].notation.trustStoreRef: ConfigMap "notation-certs" does not exist in namespace ` + ns, []client.Object{certs}},
		{`spec.verify.rules[1].notation.trustPolicyRef: ConfigMap "notation-policy" does not exist in namespace ` + ns, []client.Object{policies}},
	} {
		reconcileProxy(t, r, dp)
		k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
		c := assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonVerifyKeyMissing)
		if !strings.Contains(c.Message, step.want) {
			t.Errorf("the message does not say where it looked: %q, want %q", c.Message, step.want)
		}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "notation-depproxy"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			t.Errorf("a cache whose enforce policy lacks its trust was rolled out: %v", err)
		}
		create(ns, step.then...)
	}

	reconcileProxy(t, r, dp)
	d, cm := &appsv1.Deployment{}, &corev1.ConfigMap{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "notation-depproxy"}, d); err != nil {
		t.Fatal(err)
	}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "notation-depproxy"}, cm)
	for _, want := range []string{"trustStore: " + verifyStoresDir + "/notation-certs\n", "trustPolicy: " + verifyRootsDir + "/notation-policy/trustpolicy.json",
		"file: " + verifyRootsDir + "/sigstore-root/trusted_root.json"} {
		if !strings.Contains(cm.Data[verifyPolicyKey], want) {
			t.Errorf("the policy lacks %q:\n%s", want, cm.Data[verifyPolicyKey])
		}
	}
	_, configMaps := projectedInto(d)
	got := map[string][]corev1.KeyToPath{}
	for _, src := range configMaps {
		got[src.Name] = append(got[src.Name], src.Items...)
	}
	want := map[string][]corev1.KeyToPath{
		"notation-certs":  {{Key: "acme.pem", Path: "notation-certs/x509/ca/notation-certs/acme.pem"}},
		"notation-policy": {{Key: "trustpolicy.json", Path: "notation-policy/trustpolicy.json"}},
		"sigstore-root":   {{Key: "trusted_root.json", Path: "sigstore-root/trusted_root.json"}},
	}
	if len(got) != len(want) {
		t.Errorf("projected %v, want %v", got, want)
	}
	for name, items := range want {
		if !slices.EqualFunc(got[name], items, func(a, b corev1.KeyToPath) bool { return a.Key == b.Key && a.Path == b.Path }) {
			t.Errorf("projected from %s: %+v, want %+v", name, got[name], items)
		}
	}
}

// policyHas checks the rendered policy holds each of wants.
func policyHas(t *testing.T, policy []byte, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(string(policy), want) {
			t.Errorf("the policy lacks %q:\n%s", want, policy)
		}
	}
}

// readOnlyMounts are the proxy container's read-only mounts, by volume.
func readOnlyMounts(d *appsv1.Deployment) map[string]string {
	mounts := map[string]string{}
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		if m.ReadOnly {
			mounts[m.Name] = m.MountPath
		}
	}
	return mounts
}
