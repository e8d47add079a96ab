package controllers

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
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
// whoever set them. Applying what is already there writes nothing: the
// resourceVersion stays, and no watch fires, so a steady KezChat costs no
// writes.
func (r *KezChatReconciler) apply(ctx context.Context, obj client.Object) (applyResult, error) {
	gvk, err := apiutil.GVKForObject(obj, r.Scheme)
	if err != nil {
		return unchanged, err
	}
	// The version before, from the cache, tells a create or an update
	// from a no-op, for events.
	before, err := r.Scheme.New(gvk)
	if err != nil {
		return unchanged, err
	}
	beforeVersion := ""
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), before.(client.Object)); {
	case err == nil:
		beforeVersion = before.(client.Object).GetResourceVersion()
	case !apierrors.IsNotFound(err):
		return unchanged, fmt.Errorf("reading %s %s: %w", gvk.Kind, obj.GetName(), err)
	}

	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return unchanged, fmt.Errorf("converting %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	// A typed object carries empty status and null timestamps; applied,
	// they would claim fields the operator has no opinion on.
	delete(content, "status")
	dropNulls(content)
	u := &unstructured.Unstructured{Object: content}
	u.SetGroupVersionKind(gvk)
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return unchanged, fmt.Errorf("applying %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	switch {
	case beforeVersion == "":
		return created, nil
	case u.GetResourceVersion() != beforeVersion:
		return updated, nil
	}
	return unchanged, nil
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
