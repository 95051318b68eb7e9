package controllers

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
)

// spec.verify, the pure parts: the policy file the proxy reads
// (--verify-policy, in its ConfigMap beside its config), and the
// projected volumes of the Secrets' keys, the ConfigMaps' trusted roots
// and trust policies, and the notation trust stores it names. The manager reads the Secrets and ConfigMaps by name,
// in the resource's own namespace, only to say what is missing: they
// reach the pods through the kubelet, and a key or root replaced in
// place is re-read by the proxy without a restart.

const (
	// verifyPolicyKey is the policy file's key in the proxy's ConfigMap.
	verifyPolicyKey = "verify.yaml"
	// verifyKeysDir holds the keys, one directory per Secret, a file per
	// key: verifyKeysDir/SECRET/KEY.
	verifyKeysDir = configDir + "/verify-keys"
	// defaultVerifyKey is the key of a secretRef that names none (the
	// API server defaults it too): cosign's name for a public key.
	defaultVerifyKey = "cosign.pub"
	// verifyRootsDir holds the trusted roots and notation trust
	// policies, one directory per ConfigMap, a file per key:
	// verifyRootsDir/CONFIGMAP/KEY.
	verifyRootsDir = configDir + "/verify-roots"
	// defaultTrustedRootKey is the key of a trustedRootRef that names
	// none (the API server defaults it too): what cosign and sigstore's
	// TUF repository name it.
	defaultTrustedRootKey = "trusted_root.json"
	// verifyStoresDir holds the notation trust stores, a directory per
	// ConfigMap laid out as notation's truststore directory, a file per
	// certificate: verifyStoresDir/CONFIGMAP/x509/ca/STORE/KEY.
	verifyStoresDir = configDir + "/verify-truststores"
	// defaultTrustPolicyKey is the key of a trustPolicyRef that names
	// none (the API server defaults it too): notation's file name.
	defaultTrustPolicyKey = "trustpolicy.json"
	// verifyRecently is how long a failure keeps Verified False.
	verifyRecently = time.Hour
)

// verifyKeyRef is one key of one Secret of the resource's namespace.
type verifyKeyRef struct{ secret, key string }

func keyRefOf(k depproxyv1.VerifyKey) verifyKeyRef {
	ref := verifyKeyRef{secret: k.SecretRef.Name, key: k.SecretRef.Key}
	if ref.key == "" {
		ref.key = defaultVerifyKey
	}
	return ref
}

// path is where the pods see the key.
func (k verifyKeyRef) path() string { return verifyKeysDir + "/" + k.secret + "/" + k.key }

// verifyKeyRefs are the keys spec.verify names, each once, in the
// order of the rules.
func verifyKeyRefs(dp *depproxyv1.DependencyProxy) []verifyKeyRef {
	if dp.Spec.Verify == nil {
		return nil
	}
	var out []verifyKeyRef
	for _, r := range dp.Spec.Verify.Rules {
		for _, k := range r.Keys {
			if ref := keyRefOf(k); !slices.Contains(out, ref) {
				out = append(out, ref)
			}
		}
	}
	return out
}

// verifyRootRef is one key of one ConfigMap of the resource's
// namespace: a keyless rule's trusted root.
type verifyRootRef struct{ configMap, key string }

func rootRefOf(r depproxyv1.ConfigMapKeyRef) verifyRootRef {
	ref := verifyRootRef{configMap: r.Name, key: r.Key}
	if ref.key == "" {
		ref.key = defaultTrustedRootKey
	}
	return ref
}

// path is where the pods see the trusted root.
func (r verifyRootRef) path() string { return verifyRootsDir + "/" + r.configMap + "/" + r.key }

// verifyRootRefs are the trusted roots spec.verify names (keyless
// rules' and key rules'), each once, in the order of the rules.
func verifyRootRefs(dp *depproxyv1.DependencyProxy) []verifyRootRef {
	if dp.Spec.Verify == nil {
		return nil
	}
	var out []verifyRootRef
	for _, r := range dp.Spec.Verify.Rules {
		var ref verifyRootRef
		switch {
		case r.Keyless != nil:
			ref = rootRefOf(r.Keyless.TrustedRootRef)
		case r.TrustedRootRef != nil:
			ref = rootRefOf(*r.TrustedRootRef)
		default:
			continue
		}
		if !slices.Contains(out, ref) {
			out = append(out, ref)
		}
	}
	return out
}

// verifyStoreRef is a notation trust store: a ConfigMap of the
// resource's namespace, every key a certificate, under the store name
// the trust policy uses (ca:STORE).
type verifyStoreRef struct{ configMap, store string }

func storeRefOf(r depproxyv1.NotationTrustStoreRef) verifyStoreRef {
	ref := verifyStoreRef{configMap: r.Name, store: r.StoreName}
	if ref.store == "" {
		ref.store = r.Name
	}
	return ref
}

// dir is the trust store directory the pods see: notation's layout,
// x509/ca/STORE/KEY, under a directory of the ConfigMap's.
func (s verifyStoreRef) dir() string { return verifyStoresDir + "/" + s.configMap }

func trustPolicyRefOf(r depproxyv1.TrustPolicyRef) verifyRootRef {
	ref := verifyRootRef{configMap: r.Name, key: r.Key}
	if ref.key == "" {
		ref.key = defaultTrustPolicyKey
	}
	return ref
}

// verifyNotationConfigMaps reads the ConfigMaps spec.verify's notation
// rules name, by name, in dp's namespace only; one that does not exist
// is nil.
func (r *DependencyProxyReconciler) verifyNotationConfigMaps(ctx context.Context, dp *depproxyv1.DependencyProxy) (map[string]*corev1.ConfigMap, error) {
	out := map[string]*corev1.ConfigMap{}
	if dp.Spec.Verify == nil {
		return out, nil
	}
	for _, rule := range dp.Spec.Verify.Rules {
		if rule.Notation == nil {
			continue
		}
		for _, name := range []string{rule.Notation.TrustStoreRef.Name, rule.Notation.TrustPolicyRef.Name} {
			if _, done := out[name]; done {
				continue
			}
			cm, err := readNamed[corev1.ConfigMap](ctx, r.secrets(), dp.Namespace, name)
			if err != nil {
				return nil, err
			}
			out[name] = cm
		}
	}
	return out, nil
}

// readNamed reads the object of that name in namespace ns, the user's
// (not one the manager owns, so straight from the API server: c is
// r.secrets()), or nil when there is none.
func readNamed[T any, P interface {
	*T
	client.Object
}](ctx context.Context, c client.Reader, ns, name string) (P, error) {
	obj := P(new(T))
	err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return obj, nil
}

// configMapKeys are cm's keys, text and binary, sorted.
func configMapKeys(cm *corev1.ConfigMap) []string {
	keys := slices.Collect(maps.Keys(cm.Data))
	keys = append(keys, slices.Collect(maps.Keys(cm.BinaryData))...)
	slices.Sort(keys)
	return keys
}

// configMapValue is cm's key, text or binary.
func configMapValue(cm *corev1.ConfigMap, key string) ([]byte, bool) {
	if v, ok := cm.Data[key]; ok {
		return []byte(v), true
	}
	v, ok := cm.BinaryData[key]
	return v, ok
}

// verifyStoreKeys are the keys of ref's ConfigMap cm (nil: it does not
// exist in namespace ns), each a certificate of the trust store, or
// what is wrong with them. Every key is one or more PEM CERTIFICATE
// blocks x509 parses, as notation reads its trust store's files.
func verifyStoreKeys(cm *corev1.ConfigMap, ref verifyStoreRef, ns string) ([]string, string) {
	if cm == nil {
		return nil, fmt.Sprintf("ConfigMap %q does not exist in namespace %s", ref.configMap, ns)
	}
	keys := configMapKeys(cm)
	if len(keys) == 0 {
		return nil, fmt.Sprintf("ConfigMap %q holds no certificates", ref.configMap)
	}
	for _, k := range keys {
		rest, _ := configMapValue(cm, k)
		n := 0
		var err error
		for err == nil {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			n++
			if block.Type != "CERTIFICATE" {
				err = fmt.Errorf("a PEM %s", block.Type)
			} else {
				_, err = x509.ParseCertificate(block.Bytes)
			}
		}
		if err == nil && n == 0 {
			err = fmt.Errorf("not PEM")
		}
		if err != nil {
			return nil, fmt.Sprintf("ConfigMap %q key %q is not a PEM certificate (%v): every key of a trust store's ConfigMap is a CA certificate", ref.configMap, k, err)
		}
	}
	return keys, ""
}

// verifyTrustPolicyProblem says what is wrong with ref's trust policy
// in cm (nil: it does not exist in namespace ns), or "": it is an OCI
// trust policy document whose statements name the rule's trust store
// (ca:STORE) and no other, which the pods do not have. notation-go,
// which the manager does not link, checks the rest in the proxy.
func verifyTrustPolicyProblem(cm *corev1.ConfigMap, ref verifyRootRef, store verifyStoreRef, ns string) string {
	if cm == nil {
		return fmt.Sprintf("ConfigMap %q does not exist in namespace %s", ref.configMap, ns)
	}
	raw, ok := configMapValue(cm, ref.key)
	if !ok {
		return fmt.Sprintf("ConfigMap %q has no key %q (it has: %s)", ref.configMap, ref.key, strings.Join(configMapKeys(cm), ", "))
	}
	var doc struct {
		TrustPolicies []struct {
			Name        string   `json:"name"`
			TrustStores []string `json:"trustStores"`
		} `json:"trustPolicies"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.TrustPolicies) == 0 {
		if err == nil {
			err = fmt.Errorf("no trustPolicies")
		}
		return fmt.Sprintf("ConfigMap %q key %q is not a notation trust policy as notation's trustpolicy.json (%v)", ref.configMap, ref.key, err)
	}
	for _, st := range doc.TrustPolicies {
		for _, named := range st.TrustStores {
			if named != "ca:"+store.store {
				return fmt.Sprintf("ConfigMap %q key %q: trust policy statement %q names trust store %q, and the rule's trust store is ca:%s (ConfigMap %q; trustStoreRef.storeName, the ConfigMap's name by default)",
					ref.configMap, ref.key, st.Name, named, store.store, store.configMap)
			}
		}
	}
	return ""
}

// verifyRootProblem says what is wrong with ref's trusted root in cm
// (nil: the ConfigMap does not exist in namespace ns), or "". The
// manager checks that it is a JSON object; the proxy reads it with
// sigstore-go, which the manager does not link.
func verifyRootProblem(cm *corev1.ConfigMap, ref verifyRootRef, ns string) string {
	if cm == nil {
		return fmt.Sprintf("ConfigMap %q does not exist in namespace %s", ref.configMap, ns)
	}
	raw, ok := configMapValue(cm, ref.key)
	if !ok {
		return fmt.Sprintf("ConfigMap %q has no key %q (it has: %s)", ref.configMap, ref.key, strings.Join(configMapKeys(cm), ", "))
	}
	var root map[string]json.RawMessage
	if err := json.Unmarshal(raw, &root); err != nil {
		return fmt.Sprintf("ConfigMap %q key %q is not a trusted root as cosign trusted-root create writes trusted_root.json (%v)", ref.configMap, ref.key, err)
	}
	return ""
}

// verifyRootProblems reads the ConfigMaps spec.verify's keyless rules
// name, by name, in dp's namespace only (a trustedRootRef has no
// namespace), and says what is wrong with each root, by root; empty
// when nothing is.
func (r *DependencyProxyReconciler) verifyRootProblems(ctx context.Context, dp *depproxyv1.DependencyProxy) (map[verifyRootRef]string, error) {
	problems := map[verifyRootRef]string{}
	read := map[string]*corev1.ConfigMap{}
	for _, ref := range verifyRootRefs(dp) {
		cm, done := read[ref.configMap]
		if !done {
			var err error
			if cm, err = readNamed[corev1.ConfigMap](ctx, r.secrets(), dp.Namespace, ref.configMap); err != nil {
				return nil, err
			}
			read[ref.configMap] = cm
		}
		if p := verifyRootProblem(cm, ref, dp.Namespace); p != "" {
			problems[ref] = p
		}
	}
	return problems, nil
}

// verifyKeyProblem says what is wrong with ref's key in s (nil: the
// Secret does not exist in namespace ns), or "". The key is parsed as
// the proxy parses it (a PEM PUBLIC KEY or RSA PUBLIC KEY), so that a
// wrong key is said here, not by a proxy that will not start.
func verifyKeyProblem(s *corev1.Secret, ref verifyKeyRef, ns string) string {
	if s == nil {
		return fmt.Sprintf("Secret %q does not exist in namespace %s", ref.secret, ns)
	}
	raw, ok := s.Data[ref.key]
	if !ok {
		return fmt.Sprintf("Secret %q has no key %q (it has: %s)", ref.secret, ref.key, strings.Join(slices.Sorted(maps.Keys(s.Data)), ", "))
	}
	block, _ := pem.Decode(raw)
	var err error
	switch {
	case block == nil:
		err = fmt.Errorf("not PEM")
	case block.Type == "PUBLIC KEY":
		_, err = x509.ParsePKIXPublicKey(block.Bytes)
	case block.Type == "RSA PUBLIC KEY":
		_, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		err = fmt.Errorf("a PEM %s", block.Type)
	}
	if err != nil {
		return fmt.Sprintf("Secret %q key %q is not a PEM public key, as cosign generate-key-pair writes cosign.pub (%v)", ref.secret, ref.key, err)
	}
	return ""
}

// verifyKeyProblems reads the Secrets spec.verify names, by name, in
// dp's namespace only (a secretRef has no namespace), and says what is
// wrong with each key, by key; empty when nothing is.
func (r *DependencyProxyReconciler) verifyKeyProblems(ctx context.Context, dp *depproxyv1.DependencyProxy) (map[verifyKeyRef]string, error) {
	problems := map[verifyKeyRef]string{}
	secrets := map[string]*corev1.Secret{}
	for _, ref := range verifyKeyRefs(dp) {
		s, read := secrets[ref.secret]
		if !read {
			var err error
			if s, err = readNamed[corev1.Secret](ctx, r.secrets(), dp.Namespace, ref.secret); err != nil {
				return nil, err
			}
			secrets[ref.secret] = s
		}
		if p := verifyKeyProblem(s, ref, dp.Namespace); p != "" {
			problems[ref] = p
		}
	}
	return problems, nil
}

// verifyRendering is spec.verify as the proxy gets it.
type verifyRendering struct {
	policy []byte
	// keys are the keys mounted, each once; roots the trusted roots and
	// trust policies; stores the notation trust stores.
	keys   []verifyKeyRef
	roots  []verifyRootRef
	stores []verifyStore
	// dropped say which keys and roots an audit policy was rendered
	// without, and why.
	dropped []string
}

// verifyStore is a trust store mounted, with its ConfigMap's keys.
type verifyStore struct {
	ref  verifyStoreRef
	keys []string
}

// verifyPolicyFile is the proxy's --verify-policy format, keys as files.
type verifyPolicyFile struct {
	Mode  depproxyv1.VerifyMode `json:"mode"`
	Rules []verifyPolicyRule    `json:"rules"`
}

type verifyPolicyRule struct {
	Images      []string              `json:"images"`
	Keys        []verifyFileKey       `json:"keys,omitempty"`
	IgnoreTlog  bool                  `json:"ignoreTlog,omitempty"`
	TrustedRoot *verifyFileKey        `json:"trustedRoot,omitempty"`
	Keyless     *verifyPolicyKeyless  `json:"keyless,omitempty"`
	Notation    *verifyPolicyNotation `json:"notation,omitempty"`
}

type verifyPolicyNotation struct {
	TrustStore  string `json:"trustStore"`
	TrustPolicy string `json:"trustPolicy"`
}

type verifyPolicyKeyless struct {
	Issuer        string        `json:"issuer,omitempty"`
	IssuerRegExp  string        `json:"issuerRegExp,omitempty"`
	Subject       string        `json:"subject,omitempty"`
	SubjectRegExp string        `json:"subjectRegExp,omitempty"`
	TrustedRoot   verifyFileKey `json:"trustedRoot"`
}

type verifyFileKey struct {
	File string `json:"file"`
}

// renderVerify renders spec.verify (nil without it) given what is
// wrong with its keys (problems, by key) and its trusted roots
// (rootProblems, by root), and the ConfigMaps its notation rules name
// (notation, by name; nil or absent: not there).
//
// A key that is missing never makes a rule weaker than written. In
// enforce mode nothing is rendered at all: the reconcile waits
// (VerifyKeyMissing) and rolls nothing out, so a running proxy keeps the
// policy it has, and a new one does not start serving unchecked; a rule
// rendered without it would refuse what that key signed, and one left
// out would serve unverified images. In audit mode, which refuses
// nothing, the key is left out (a rule left without keys, left out
// whole) and the Verified condition says so. A trusted root is as a
// key: a keyless rule, or a key rule naming one, without it waits in
// enforce mode, and is left out in audit mode. So does a notation rule
// whose trust store or trust policy is not there or not right.
//
// A keyless rule's regular expression that Go does not compile (the
// proxy's, sigstore-go's syntax) stalls the reconcile: the proxy would
// not load the policy.
func renderVerify(dp *depproxyv1.DependencyProxy, problems map[verifyKeyRef]string, rootProblems map[verifyRootRef]string, notation map[string]*corev1.ConfigMap) (*verifyRendering, error) {
	v := dp.Spec.Verify
	if v == nil {
		return nil, nil
	}
	mode := v.Mode
	if mode == "" {
		mode = depproxyv1.VerifyEnforce
	}
	out := &verifyRendering{}
	f := verifyPolicyFile{Mode: mode, Rules: []verifyPolicyRule{}}
	for i, r := range v.Rules {
		pr := verifyPolicyRule{Images: r.Images, IgnoreTlog: r.IgnoreTlog}
		for j, k := range r.Keys {
			ref := keyRefOf(k)
			if p := problems[ref]; p != "" {
				if mode == depproxyv1.VerifyEnforce {
					return nil, waiting(depproxyv1.ReasonVerifyKeyMissing,
						"spec.verify.rules[%d].keys[%d]: %s. In enforce mode the policy is not rolled out without its keys, and nothing else is either: the running proxy, if any, keeps the policy it has. Put the cosign public key there (cosign public-key --key ... > cosign.pub; kubectl create secret generic %s --from-file=%s=cosign.pub), or change the rule",
						i, j, p, ref.secret, ref.key)
				}
				out.dropped = append(out.dropped, fmt.Sprintf("rules[%d].keys[%d]: %s", i, j, p))
				continue
			}
			pr.Keys = append(pr.Keys, verifyFileKey{File: ref.path()})
			if !slices.Contains(out.keys, ref) {
				out.keys = append(out.keys, ref)
			}
		}
		if r.TrustedRootRef != nil && len(pr.Keys) > 0 {
			ref := rootRefOf(*r.TrustedRootRef)
			if p := rootProblems[ref]; p != "" {
				if mode == depproxyv1.VerifyEnforce {
					return nil, waiting(depproxyv1.ReasonVerifyKeyMissing,
						"spec.verify.rules[%d].trustedRootRef: %s. In enforce mode the policy is not rolled out without its trusted roots, and nothing else is either: the running proxy, if any, keeps the policy it has. Put the trusted root there (kubectl create configmap %s --from-file=%s=trusted_root.json), or change the rule",
						i, p, ref.configMap, ref.key)
				}
				// Without its root the rule would refuse every signature
				// with a log proof: left out whole, as audit refuses nothing.
				out.dropped = append(out.dropped, fmt.Sprintf("rules[%d].trustedRootRef: %s", i, p))
				continue
			}
			pr.TrustedRoot = &verifyFileKey{File: ref.path()}
			if !slices.Contains(out.roots, ref) {
				out.roots = append(out.roots, ref)
			}
		}
		if n := r.Notation; n != nil {
			store, policy := storeRefOf(n.TrustStoreRef), trustPolicyRefOf(n.TrustPolicyRef)
			keys, p := verifyStoreKeys(notation[store.configMap], store, dp.Namespace)
			field, fix := "trustStoreRef", fmt.Sprintf("kubectl create configmap %s --from-file=ca.pem", store.configMap)
			if p == "" {
				p = verifyTrustPolicyProblem(notation[policy.configMap], policy, store, dp.Namespace)
				field, fix = "trustPolicyRef", fmt.Sprintf("kubectl create configmap %s --from-file=%s=trustpolicy.json", policy.configMap, policy.key)
			}
			if p != "" {
				if mode == depproxyv1.VerifyEnforce {
					return nil, waiting(depproxyv1.ReasonVerifyKeyMissing,
						"spec.verify.rules[%d].notation.%s: %s. In enforce mode the policy is not rolled out without its trust stores and trust policies, and nothing else is either: the running proxy, if any, keeps the policy it has. Put them there (%s), or change the rule",
						i, field, p, fix)
				}
				out.dropped = append(out.dropped, fmt.Sprintf("rules[%d].notation.%s: %s", i, field, p))
				continue
			}
			pr.Notation = &verifyPolicyNotation{TrustStore: store.dir(), TrustPolicy: policy.path()}
			if !slices.ContainsFunc(out.stores, func(s verifyStore) bool { return s.ref == store }) {
				out.stores = append(out.stores, verifyStore{ref: store, keys: keys})
			}
			if !slices.Contains(out.roots, policy) {
				out.roots = append(out.roots, policy)
			}
		}
		if kl := r.Keyless; kl != nil {
			for field, re := range map[string]string{"issuerRegExp": kl.IssuerRegExp, "subjectRegExp": kl.SubjectRegExp} {
				if _, err := regexp.Compile(re); err != nil {
					return nil, stalled(depproxyv1.ReasonInvalidSettings, "spec.verify.rules[%d].keyless.%s: %v", i, field, err)
				}
			}
			ref := rootRefOf(kl.TrustedRootRef)
			if p := rootProblems[ref]; p != "" {
				if mode == depproxyv1.VerifyEnforce {
					return nil, waiting(depproxyv1.ReasonVerifyKeyMissing,
						"spec.verify.rules[%d].keyless.trustedRootRef: %s. In enforce mode the policy is not rolled out without its trusted roots, and nothing else is either: the running proxy, if any, keeps the policy it has. Put the trusted root there (kubectl create configmap %s --from-file=%s=trusted_root.json), or change the rule",
						i, p, ref.configMap, ref.key)
				}
				out.dropped = append(out.dropped, fmt.Sprintf("rules[%d].keyless.trustedRootRef: %s", i, p))
				continue
			}
			pr.Keyless = &verifyPolicyKeyless{Issuer: kl.Issuer, IssuerRegExp: kl.IssuerRegExp, Subject: kl.Subject, SubjectRegExp: kl.SubjectRegExp,
				TrustedRoot: verifyFileKey{File: ref.path()}}
			if !slices.Contains(out.roots, ref) {
				out.roots = append(out.roots, ref)
			}
		}
		if len(pr.Keys) > 0 || pr.Keyless != nil || pr.Notation != nil {
			f.Rules = append(f.Rules, pr)
		}
	}
	raw, err := yaml.Marshal(f)
	if err != nil {
		return nil, err
	}
	out.policy = raw
	return out, nil
}

// withVerify puts the policy in the proxy's ConfigMap and names it in
// its config file. (The config file changing rolls the pods; the policy
// file alone does not: the proxy re-reads it, see configHash.)
func withVerify(cm *corev1.ConfigMap, v *verifyRendering) (*corev1.ConfigMap, error) {
	if v == nil {
		return cm, nil
	}
	conf, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil {
		return nil, err
	}
	conf.VerifyPolicy = configDir + "/" + verifyPolicyKey
	raw, err := conf.Marshal()
	if err != nil {
		return nil, err
	}
	cm.Data[configKey], cm.Data[verifyPolicyKey] = string(raw), string(v.policy)
	return cm, nil
}

// verifyKeysVolume projects the keys the policy names, one source per
// Secret, each key at SECRET/KEY. Only the keys named are mounted, never
// the rest of a Secret. Nil when there are none.
func verifyKeysVolume(v *verifyRendering) *corev1.Volume {
	if v == nil || len(v.keys) == 0 {
		return nil
	}
	bySecret := map[string][]corev1.KeyToPath{}
	for _, k := range v.keys {
		bySecret[k.secret] = append(bySecret[k.secret], corev1.KeyToPath{Key: k.key, Path: k.secret + "/" + k.key})
	}
	var sources []corev1.VolumeProjection
	for _, name := range slices.Sorted(maps.Keys(bySecret)) {
		items := bySecret[name]
		slices.SortFunc(items, func(a, b corev1.KeyToPath) int { return strings.Compare(a.Key, b.Key) })
		sources = append(sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Items: items}})
	}
	return &corev1.Volume{Name: "verify-keys", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: sources, DefaultMode: ptr.To[int32](0o440)}}}
}

// verifyRootsVolume projects the trusted roots and trust policies the
// policy names, one source per ConfigMap, each key at CONFIGMAP/KEY.
// Only the keys named are mounted. Nil when there are none.
func verifyRootsVolume(v *verifyRendering) *corev1.Volume {
	if v == nil || len(v.roots) == 0 {
		return nil
	}
	byConfigMap := map[string][]corev1.KeyToPath{}
	for _, r := range v.roots {
		byConfigMap[r.configMap] = append(byConfigMap[r.configMap], corev1.KeyToPath{Key: r.key, Path: r.configMap + "/" + r.key})
	}
	var sources []corev1.VolumeProjection
	for _, name := range slices.Sorted(maps.Keys(byConfigMap)) {
		items := byConfigMap[name]
		slices.SortFunc(items, func(a, b corev1.KeyToPath) int { return strings.Compare(a.Key, b.Key) })
		sources = append(sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Items: items}})
	}
	return &corev1.Volume{Name: "verify-roots", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: sources, DefaultMode: ptr.To[int32](0o444)}}}
}

// verifyStoresVolume projects the notation trust stores the policy
// names, one source per ConfigMap, each of its keys (all are
// certificates) at CONFIGMAP/x509/ca/STORE/KEY, notation's layout under
// the directory the rule names. Nil when there are none.
func verifyStoresVolume(v *verifyRendering) *corev1.Volume {
	if v == nil || len(v.stores) == 0 {
		return nil
	}
	byConfigMap := map[string][]corev1.KeyToPath{}
	for _, s := range v.stores {
		for _, k := range s.keys {
			byConfigMap[s.ref.configMap] = append(byConfigMap[s.ref.configMap],
				corev1.KeyToPath{Key: k, Path: s.ref.configMap + "/x509/ca/" + s.ref.store + "/" + k})
		}
	}
	var sources []corev1.VolumeProjection
	for _, name := range slices.Sorted(maps.Keys(byConfigMap)) {
		items := byConfigMap[name]
		slices.SortFunc(items, func(a, b corev1.KeyToPath) int { return strings.Compare(a.Path, b.Path) })
		sources = append(sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Items: items}})
	}
	return &corev1.Volume{Name: "verify-truststores", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: sources, DefaultMode: ptr.To[int32](0o444)}}}
}

// mountVerifyKeys mounts the keys, the trusted roots and trust policies
// and the trust stores into the proxy's pods.
func mountVerifyKeys(d *appsv1.Deployment, v *verifyRendering) {
	pod := &d.Spec.Template.Spec
	c := &pod.Containers[0]
	for _, m := range []struct {
		vol  *corev1.Volume
		path string
	}{{verifyKeysVolume(v), verifyKeysDir}, {verifyRootsVolume(v), verifyRootsDir}, {verifyStoresVolume(v), verifyStoresDir}} {
		if m.vol == nil {
			continue
		}
		pod.Volumes = append(pod.Volumes, *m.vol)
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: m.vol.Name, MountPath: m.path, ReadOnly: true})
	}
}

// verifyConditions are spec.verify's condition, Verified: taken out
// without spec.verify; False while an audit policy is rendered without
// some of its keys (dropped); else from the summary s (nil: not read
// this time, nothing said): Unknown while the proxy reports no
// verification, False while an image failed in the hour before the
// report (the last one named), True otherwise.
func verifyConditions(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary, dropped []string) conditions {
	if dp.Spec.Verify == nil {
		return conditions{remove: []string{depproxyv1.ConditionVerified}}
	}
	set := func(st metav1.ConditionStatus, reason, msg string) conditions {
		return conditions{set: []metav1.Condition{condition(dp.Generation, depproxyv1.ConditionVerified, st, reason, msg)}}
	}
	if len(dropped) > 0 {
		return set(metav1.ConditionFalse, depproxyv1.ReasonVerifyKeyMissing,
			fmt.Sprintf("audit mode: the policy is checked without %d of its keys, trusted roots, trust stores and trust policies until they are there (a rule left without keys, its trusted root, trust store or trust policy is not checked): %s",
				len(dropped), strings.Join(dropped[:min(len(dropped), 5)], "; ")))
	}
	if s == nil {
		return conditions{}
	}
	v := s.Verification
	if v == nil {
		return set(metav1.ConditionUnknown, depproxyv1.ReasonVerificationNotReported,
			"the cache reports no verification yet (a proxy image older than spec.verify?)")
	}
	counts := fmt.Sprintf("%d verified, %d refused, %d served unverified (audit mode) since the replica asked started", v.Verified, v.Refused, v.Audited)
	if len(v.LastRefusals) > 0 {
		last := v.LastRefusals[0]
		if s.ReportedAt.Sub(last.At.Time) < verifyRecently {
			reason, what := depproxyv1.ReasonImageRefused, "refused"
			if last.Audited {
				reason, what = depproxyv1.ReasonUnverifiedServed, "served unverified (audit mode)"
			}
			return set(metav1.ConditionFalse, reason,
				fmt.Sprintf("%s %s at %s by the policy's %s: %s; %s", last.Image, what, last.At.UTC().Format(time.RFC3339), last.Rule, last.Reason, counts))
		}
	}
	return set(metav1.ConditionTrue, depproxyv1.ReasonAllVerified, "no image failed verification in the last hour; "+counts)
}

// toVerificationSummary bounds the proxy's verification report for the
// status.
func toVerificationSummary(v *report.VerifySummary) *depproxyv1.VerificationSummary {
	if v == nil {
		return nil
	}
	out := &depproxyv1.VerificationSummary{Verified: v.Verified, Refused: v.Refused, Audited: v.Audited}
	for i, f := range v.LastRefusals {
		if i == report.MaxRefusals {
			break
		}
		out.LastRefusals = append(out.LastRefusals, depproxyv1.VerificationRefusal{Image: clip(f.Image, 512), Rule: clip(f.Rule, 512),
			Reason: clip(f.Reason, 512), Audited: f.Audited, At: metav1.NewTime(f.At)})
	}
	return out
}

// clip cuts s to n bytes at most, at a rune's start.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
