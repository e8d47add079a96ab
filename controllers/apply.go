package controllers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/client-go/applyconfigurations"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayapplyconfiguration "sigs.k8s.io/gateway-api/applyconfiguration"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
	"sigs.k8s.io/structured-merge-diff/v6/typed"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// applyResult says what an apply did to the object.
type applyResult int

const (
	unchanged applyResult = iota
	created
	updated
)

// apply makes obj's fields as the operator sets them true on the API
// server by server-side apply, as FieldOwner, taking back any field
// someone else changed. Fields the operator does not set are left to
// whoever set them.
//
// It sends nothing when the cached object already holds, under the
// operator's field manager, exactly the fields obj sets: a steady KezChat
// costs the API server no request at all, while an edit of an owned field
// (which moves or drops the operator's ownership of it) shows as a
// difference and is applied back.
func (r *KezChatReconciler) apply(ctx context.Context, kc *chatv1.KezChat, obj client.Object) (applyResult, error) {
	gvk, err := apiutil.GVKForObject(obj, r.Scheme)
	if err != nil {
		return unchanged, err
	}
	digest, err := r.desiredDigest(obj)
	if err != nil {
		return unchanged, fmt.Errorf("encoding %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	key := appliedKey{client.ObjectKeyFromObject(kc), gvk.GroupKind(), obj.GetName()}

	before, err := r.Scheme.New(gvk)
	if err != nil {
		return unchanged, err
	}
	cached := before.(client.Object)
	var content map[string]any
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), cached); {
	case err == nil:
		// Seen as it is now, with this same desired state, before.
		if r.applied.matches(key, cached.GetResourceVersion(), digest) {
			return unchanged, nil
		}
		if content, err = r.applyConfiguration(obj, gvk); err != nil {
			return unchanged, err
		}
		same, err := r.ownsAsDesired(cached, content)
		if err != nil {
			return unchanged, fmt.Errorf("comparing %s %s with what the operator applied: %w", gvk.Kind, obj.GetName(), err)
		}
		if same {
			r.applied.record(key, cached.GetResourceVersion(), digest)
			return unchanged, nil
		}
	case apierrors.IsNotFound(err):
		cached = nil
		if content, err = r.applyConfiguration(obj, gvk); err != nil {
			return unchanged, err
		}
	default:
		return unchanged, fmt.Errorf("reading %s %s: %w", gvk.Kind, obj.GetName(), err)
	}

	patch, err := json.Marshal(content)
	if err != nil {
		return unchanged, fmt.Errorf("encoding %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	// The answer is decoded into a typed object, which costs far less
	// memory than an unstructured one.
	answer, err := r.Scheme.New(gvk)
	if err != nil {
		return unchanged, err
	}
	after := answer.(client.Object)
	after.SetNamespace(obj.GetNamespace())
	after.SetName(obj.GetName())
	if err := r.Client.Patch(ctx, after, client.RawPatch(types.ApplyPatchType, patch),
		client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return unchanged, fmt.Errorf("applying %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	// The answer is the object as this apply left it.
	r.applied.record(key, after.GetResourceVersion(), digest)
	switch {
	case cached == nil:
		return created, nil
	case after.GetResourceVersion() != cached.GetResourceVersion():
		return updated, nil
	}
	return unchanged, nil
}

// desiredDigest identifies obj's desired state.
func (r *KezChatReconciler) desiredDigest(obj client.Object) ([sha256.Size]byte, error) {
	desired, err := json.Marshal(obj)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(desired), nil
}

// appliedKey names a child of a KezChat.
type appliedKey struct {
	kezChat types.NamespacedName
	kind    schema.GroupKind
	name    string
}

// appliedVersions remembers, per child, the resourceVersion at which it
// was last found to hold (or was applied with) a desired state, by digest.
// The same version with the same desired state needs no comparison: what
// deciding not to apply costs in CPU is then a digest and a map lookup,
// not a walk of the object's schema. It holds 32 bytes per child, kept by
// KezChat, so the children of a deleted one are forgotten with it
// (forget).
type appliedVersions struct {
	mu   sync.Mutex
	byKC map[types.NamespacedName]map[[16]byte][16]byte
}

// ids are what appliedVersions keeps of a child and of a version with a
// desired state: halves of their SHA-256 digests.
func (key appliedKey) ids(resourceVersion string, digest [sha256.Size]byte) (child, seen [16]byte) {
	c := sha256.Sum256([]byte(key.kind.String() + "/" + key.name))
	s := sha256.Sum256(append([]byte(resourceVersion+"/"), digest[:]...))
	copy(child[:], c[:])
	copy(seen[:], s[:])
	return child, seen
}

func (a *appliedVersions) matches(key appliedKey, resourceVersion string, digest [sha256.Size]byte) bool {
	child, seen := key.ids(resourceVersion, digest)
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.byKC[key.kezChat][child]
	return ok && v == seen
}

func (a *appliedVersions) record(key appliedKey, resourceVersion string, digest [sha256.Size]byte) {
	child, seen := key.ids(resourceVersion, digest)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byKC == nil {
		a.byKC = map[types.NamespacedName]map[[16]byte][16]byte{}
	}
	children := a.byKC[key.kezChat]
	if children == nil {
		children = map[[16]byte][16]byte{}
		a.byKC[key.kezChat] = children
	}
	children[child] = seen
}

// forget drops what is remembered of kc's children.
func (a *appliedVersions) forget(kc types.NamespacedName) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.byKC, kc)
}

// applyConfiguration is obj as an apply configuration: only the fields
// the operator sets, with its apiVersion and kind.
func (r *KezChatReconciler) applyConfiguration(obj client.Object, gvk schema.GroupVersionKind) (map[string]any, error) {
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	// A typed object carries empty status and null timestamps; applied,
	// they would claim fields the operator has no opinion on.
	delete(content, "status")
	dropNulls(content)
	content["apiVersion"], content["kind"] = gvk.GroupVersion().String(), gvk.Kind
	return content, nil
}

// ownsAsDesired reports whether live holds, under the operator's apply
// field manager, exactly the fields and values of desired (an apply
// configuration as unstructured content): what server-side apply of
// desired would leave as it is. Fields others own are not compared.
//
// Two checks, as server-side apply itself sees the object:
//   - the set of fields the operator owns is the set desired names, so
//     a field it no longer sets, or one it lost to someone else's edit
//     (an update or a forced apply of an owned field moves its ownership
//     away), counts as a difference;
//   - each value desired sets is in the object. Within an atomic owned
//     value (a volume claim template, a fieldRef) the API server may
//     have added defaults; anyone else's change to it would have taken it
//     over, so only desired's fields are compared there.
func (r *KezChatReconciler) ownsAsDesired(live runtime.Object, desired map[string]any) (bool, error) {
	accessor, err := meta.Accessor(live)
	if err != nil {
		return false, err
	}
	var owned []byte
	for _, e := range accessor.GetManagedFields() {
		if e.Manager == FieldOwner && e.Operation == metav1.ManagedFieldsOperationApply && e.Subresource == "" && e.FieldsV1 != nil {
			owned = e.FieldsV1.Raw
			break
		}
	}
	if owned == nil {
		return false, nil
	}
	converter := r.typeConverter()
	want, err := converter.ObjectToTyped(&unstructured.Unstructured{Object: desired})
	if err != nil {
		return false, err
	}
	wantFields, err := want.ToFieldSet()
	if err != nil {
		return false, err
	}
	// The API server keeps no ownership of an object's identity.
	wantFields = wantFields.Difference(identityFields)
	// The API server writes a field set as this same library does, so
	// equal sets have equal JSON.
	wantJSON, err := wantFields.ToJSON()
	if err != nil {
		return false, err
	}
	if !bytes.Equal(owned, fieldsDigest(wantJSON)) {
		return false, nil
	}
	// The fields are the operator's; their values are compared on the
	// whole object, so that an item someone else added to a list the
	// operator sets counts as a difference too (an apply that finds
	// nothing to change, then remembered): reading the object as a plain
	// map costs far less than extracting the owned fields by schema.
	have, err := runtime.DefaultUnstructuredConverter.ToUnstructured(live)
	if err != nil {
		return false, err
	}
	return holds(have, desired), nil
}

// ownManagedFieldsOnly is the cache's transform of every object: it drops
// every managed-fields entry but the operator's own apply, and keeps of
// that one only a digest of its field set, which is all apply compares
// (ownsAsDesired). The others, one per controller or user that ever wrote
// the object, and the field sets themselves, only cost memory.
func ownManagedFieldsOnly(obj any) (any, error) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return obj, nil
	}
	var kept []metav1.ManagedFieldsEntry
	for _, e := range o.GetManagedFields() {
		if e.Manager == FieldOwner && e.Operation == metav1.ManagedFieldsOperationApply && e.Subresource == "" && e.FieldsV1 != nil {
			// The informer may hand an object it already transformed
			// to the transform again (a relist replaces what it holds).
			if !bytes.HasPrefix(e.FieldsV1.Raw, fieldsDigestPrefix) {
				e.FieldsV1 = &metav1.FieldsV1{Raw: fieldsDigest(e.FieldsV1.Raw)}
			}
			kept = append(kept, e)
		}
	}
	o.SetManagedFields(kept)
	return obj, nil
}

// fieldsDigest stands for a field set's JSON in the cache. It is JSON
// itself, since a cached object may be encoded (to compute a merge patch);
// it is never sent as managed fields (an update clears them first).
func fieldsDigest(fieldsJSON []byte) []byte {
	sum := sha256.Sum256(fieldsJSON)
	return []byte(string(fieldsDigestPrefix) + hex.EncodeToString(sum[:]) + `"}`)
}

var fieldsDigestPrefix = []byte(`{"sha256":"`)

// identityFields are the fields of an apply that name the object rather
// than set it.
var identityFields = fieldpath.NewSet(
	fieldpath.MakePathOrDie("apiVersion"),
	fieldpath.MakePathOrDie("kind"),
	fieldpath.MakePathOrDie("metadata", "name"),
	fieldpath.MakePathOrDie("metadata", "namespace"),
)

// holds reports whether have holds every value of want: the same scalars,
// every key of want's maps, lists of the same length whose items hold
// want's. An empty map or list in want asks for nothing. Both sides come
// from the same converter, so equal numbers have equal types.
func holds(have, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, _ := have.(map[string]any)
		for k, wv := range w {
			if !holds(h[k], wv) {
				return false
			}
		}
		return true
	case []any:
		h, _ := have.([]any)
		if len(w) == 0 {
			return true
		}
		if len(h) != len(w) {
			return false
		}
		for i := range w {
			if !holds(h[i], w[i]) {
				return false
			}
		}
		return true
	case nil:
		return true
	}
	return reflect.DeepEqual(have, want)
}

// typeConverter turns typed objects into the structured values server-side
// apply works on; built once, from the scheme and the schemas of
// client-go and, for HTTPRoutes, of the Gateway API.
func (r *KezChatReconciler) typeConverter() managedfields.TypeConverter {
	r.converterOnce.Do(func() {
		r.converter = byGroupTypeConverter{
			builtin: applyconfigurations.NewTypeConverter(r.Scheme),
			groups: map[string]managedfields.TypeConverter{
				gatewayv1.GroupName: gatewayapplyconfiguration.NewTypeConverter(r.Scheme),
				// client-go has no schema of the Prometheus Operator's
				// kinds: they are compared with one deduced from the
				// object. Its field sets need not match the API server's,
				// which then costs one apply that changes nothing, after
				// which the applied version is remembered.
				monitoringv1.SchemeGroupVersion.Group: managedfields.NewDeducedTypeConverter(),
			},
		}
	})
	return r.converter
}

// byGroupTypeConverter converts an object with the schemas of its API
// group: each generated converter knows only its own module's types.
type byGroupTypeConverter struct {
	builtin managedfields.TypeConverter
	groups  map[string]managedfields.TypeConverter
}

func (c byGroupTypeConverter) of(group string) managedfields.TypeConverter {
	if tc, ok := c.groups[group]; ok {
		return tc
	}
	return c.builtin
}

func (c byGroupTypeConverter) ObjectToTyped(obj runtime.Object, opts ...typed.ValidationOptions) (*typed.TypedValue, error) {
	return c.of(obj.GetObjectKind().GroupVersionKind().Group).ObjectToTyped(obj, opts...)
}

func (c byGroupTypeConverter) TypedToObject(value *typed.TypedValue) (runtime.Object, error) {
	// Turning a value back into an object needs no schema.
	return c.builtin.TypedToObject(value)
}

// dropNulls removes the null values from m and the maps inside it.
func dropNulls(m map[string]any) {
	for k, v := range m {
		switch v := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			dropNulls(v)
		case []any:
			for _, e := range v {
				if em, ok := e.(map[string]any); ok {
					dropNulls(em)
				}
			}
		}
	}
}
