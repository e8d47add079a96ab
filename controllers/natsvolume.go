package controllers

import (
	"context"
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

// expandNATSVolumes grows every NATS replica's JetStream claim to
// spec.nats.storage.size, where the claim asks for less, and returns the
// size of the StatefulSet's claim template to keep applying (nil when the
// StatefulSet does not exist yet). The volume grows where the storage class
// allows expansion; max_file_store, sized from the spec, lifts with it when
// the new configuration rolls the pods.
func (r *KezChatReconciler) expandNATSVolumes(ctx context.Context, kc *chatv1.KezChat) (*resource.Quantity, error) {
	n := namesOf(kc)
	var sts appsv1.StatefulSet
	var found *appsv1.StatefulSet
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: n.nats()}, &sts); {
	case err == nil:
		found = &sts
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading StatefulSet %s: %w", n.nats(), err)
	}
	want := kc.Spec.NATS.Storage.SizeOrDefault()
	var claims corev1.PersistentVolumeClaimList
	if err := r.Client.List(ctx, &claims, client.InNamespace(kc.Namespace), client.MatchingLabels(selectorLabels(kc, componentNATS))); err != nil {
		return nil, fmt.Errorf("listing NATS volume claims: %w", err)
	}
	for i := range claims.Items {
		pvc := &claims.Items[i]
		if !isNATSDataClaim(kc, pvc) || !claimToGrow(pvc, want) {
			continue
		}
		before := pvc.DeepCopy()
		had := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		if pvc.Spec.Resources.Requests == nil {
			pvc.Spec.Resources.Requests = corev1.ResourceList{}
		}
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = want
		// A merge patch of the one field: the StatefulSet controller owns
		// the claim, the operator only asks for more room.
		if err := r.Client.Patch(ctx, pvc, client.MergeFrom(before)); err != nil {
			hint := ""
			if apierrors.IsForbidden(err) {
				hint = " (the claim's storage class must set allowVolumeExpansion: true)"
			}
			return nil, fmt.Errorf("expanding NATS volume claim %s to %s%s: %w", pvc.Name, want.String(), hint, err)
		}
		r.Recorder.Eventf(kc, pvc, corev1.EventTypeNormal, "VolumeExpanding", "Update",
			"expanding PersistentVolumeClaim %s from %s to %s", pvc.Name, had.String(), want.String())
	}
	return natsClaimTemplateSize(found), nil
}
