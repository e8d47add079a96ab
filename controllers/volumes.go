package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// natsDataClaim is the name of the StatefulSet's volume claim template:
// replica i's claim is data-<statefulset>-<i>.
const natsDataClaim = "data"

// natsClaimIndex indexes the cached volume claims of NATS replicas by the
// KezChat they belong to, so that a reconcile finds its own without
// going through every claim of a namespace with many KezChats.
const natsClaimIndex = "kezchat.nats-claims"

// natsClaimOf is natsClaimIndex's key: the KezChat whose NATS's claim the
// object is, by its labels.
func natsClaimOf(obj client.Object) []string {
	l := obj.GetLabels()
	if l["app.kubernetes.io/component"] != componentNATS || l["app.kubernetes.io/name"] != "kez-chat" || l["app.kubernetes.io/instance"] == "" {
		return nil
	}
	return []string{l["app.kubernetes.io/instance"]}
}

// natsClaimTemplateSize is the size in the volume claim template of NATS's
// StatefulSet as it exists, or nil when there is none yet. A StatefulSet's
// claim templates cannot change, so the operator keeps applying the size it
// was created with and grows the claims themselves (expandNATSVolumes).
func natsClaimTemplateSize(sts *appsv1.StatefulSet) *resource.Quantity {
	if sts == nil {
		return nil
	}
	for _, t := range sts.Spec.VolumeClaimTemplates {
		if t.Name != natsDataClaim {
			continue
		}
		if q, ok := t.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
			return &q
		}
	}
	return nil
}

// isNATSDataClaim reports whether pvc is one of kc's NATS replicas'
// JetStream claims, as the StatefulSet controller names them.
func isNATSDataClaim(kc *chatv1.KezChat, pvc *corev1.PersistentVolumeClaim) bool {
	rest, ok := strings.CutPrefix(pvc.Name, natsDataClaim+"-"+namesOf(kc).nats()+"-")
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// claimToGrow reports whether pvc asks for less storage than want.
// A claim never shrinks.
func claimToGrow(pvc *corev1.PersistentVolumeClaim, want resource.Quantity) bool {
	have, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	return !ok || have.Cmp(want) < 0
}

// errVolumeExpansion marks a claim the API server would not grow (its
// storage class does not allow expansion): the user must act, and
// everything else of the spec still applies.
var errVolumeExpansion = errors.New("NATS volume expansion refused")

// natsVolumes is what expandNATSVolumes found and did.
type natsVolumes struct {
	// templateSize is the size in the StatefulSet's claim template, to
	// keep applying; nil when there is no StatefulSet yet.
	templateSize *resource.Quantity
	// storeSize is the least any replica's claim asks for after the
	// expansion, which max_file_store is sized from; nil when there are
	// no claims yet.
	storeSize *resource.Quantity
	// refused says which claims the API server would not grow.
	refused error
}

// expandNATSVolumes grows every NATS replica's JetStream claim to
// spec.nats.storage.size, where the claim asks for less. The volume grows
// where the storage class allows expansion; max_file_store, sized from
// what the claims ask for, lifts with it when the new configuration rolls
// the pods. A claim the API server refuses to grow is reported in
// refused, and keeps its size and its cap.
func (r *KezChatReconciler) expandNATSVolumes(ctx context.Context, kc *chatv1.KezChat) (natsVolumes, error) {
	var out natsVolumes
	n := namesOf(kc)
	var sts appsv1.StatefulSet
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: n.nats()}, &sts); {
	case err == nil:
		out.templateSize = natsClaimTemplateSize(&sts)
	case !apierrors.IsNotFound(err):
		return out, fmt.Errorf("reading StatefulSet %s: %w", n.nats(), err)
	}
	want := kc.Spec.NATS.Storage.SizeOrDefault()
	var claims corev1.PersistentVolumeClaimList
	if err := r.Client.List(ctx, &claims, client.InNamespace(kc.Namespace), client.MatchingFields{natsClaimIndex: kc.Name}); err != nil {
		return out, fmt.Errorf("listing NATS volume claims: %w", err)
	}
	var refused []error
	for i := range claims.Items {
		pvc := &claims.Items[i]
		if !isNATSDataClaim(kc, pvc) {
			continue
		}
		if claimToGrow(pvc, want) {
			if err := r.growClaim(ctx, kc, pvc, want); errors.Is(err, errVolumeExpansion) {
				refused = append(refused, err)
			} else if err != nil {
				return out, err
			}
		}
		have := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		if out.storeSize == nil || have.Cmp(*out.storeSize) < 0 {
			out.storeSize = &have
		}
	}
	out.refused = errors.Join(refused...)
	return out, nil
}

// growClaim asks for want in pvc, by a merge patch of the one field: the
// StatefulSet controller owns the claim, the operator only asks for more
// room. On success pvc holds the new request.
func (r *KezChatReconciler) growClaim(ctx context.Context, kc *chatv1.KezChat, pvc *corev1.PersistentVolumeClaim, want resource.Quantity) error {
	had := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	grown := pvc.DeepCopy()
	if grown.Spec.Resources.Requests == nil {
		grown.Spec.Resources.Requests = corev1.ResourceList{}
	}
	grown.Spec.Resources.Requests[corev1.ResourceStorage] = want
	err := r.Client.Patch(ctx, grown, client.MergeFrom(pvc))
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsInvalid(err):
		// Most often a class without allowVolumeExpansion: true.
		return fmt.Errorf("%w: PersistentVolumeClaim %s stays at %s (its storage class must allow expansion: allowVolumeExpansion: true): %v",
			errVolumeExpansion, pvc.Name, had.String(), err)
	case err != nil:
		return fmt.Errorf("expanding NATS volume claim %s to %s: %w", pvc.Name, want.String(), err)
	}
	*pvc = *grown
	r.Recorder.Eventf(kc, pvc, corev1.EventTypeNormal, "VolumeExpanding", "Update",
		"expanding PersistentVolumeClaim %s from %s to %s", pvc.Name, had.String(), want.String())
	return nil
}

// claimSizes is what each of kc's own claims (the server's, the
// sig-server's) asks for now, by name, from the cache.
func (r *KezChatReconciler) claimSizes(ctx context.Context, kc *chatv1.KezChat) (map[string]resource.Quantity, error) {
	sizes := map[string]resource.Quantity{}
	n := namesOf(kc)
	for _, name := range []string{n.serverData(), n.sigServerData()} {
		var pvc corev1.PersistentVolumeClaim
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: name}, &pvc); {
		case err == nil:
			sizes[name] = pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("reading PersistentVolumeClaim %s: %w", name, err)
		}
	}
	return sizes, nil
}

// refusedGrowth tells whether err, from applying an existing claim, is the
// API server refusing to grow it, and says so for the status.
func refusedGrowth(pvc *corev1.PersistentVolumeClaim, had resource.Quantity, err error) error {
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		return nil
	}
	return fmt.Errorf("%w: PersistentVolumeClaim %s stays at %s (its storage class must allow expansion: allowVolumeExpansion: true): %v",
		errVolumeExpansion, pvc.Name, had.String(), err)
}
