package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// The finalizer is added and removed by patching the KezChat; the data is
// released by patching, or deleted.
// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchats,verbs=patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims;secrets,verbs=patch;delete

// dataFinalizer holds a deleted KezChat until its data is dealt with as
// spec.deletionPolicy says: deleted (Delete), or, under Retain, released
// from any owner reference left from a time it was under Delete.
const dataFinalizer = "chat.kez.lat/data"

// Reasons of the deletion's events.
const (
	ReasonDataRetained = "DataRetained"
	ReasonDataDeleted  = "DataDeleted"
	ReasonAdopted      = "Adopted"
)

// ownsData reports whether kc's data (its volume claims, its generated
// VAPID Secret) carries kc's owner reference. Only under deletionPolicy
// Delete: under Retain nothing ties the data to the KezChat, so neither a
// foreground deletion (Argo CD's), nor a KezChat deleted while no operator
// runs to finalize it, nor the garbage collector takes it; a KezChat of the
// same name finds it by name and labels.
func ownsData(kc *chatv1.KezChat) bool {
	return kc.Spec.DeletionPolicyOrDefault() == chatv1.DeletionDelete
}

// ownedByKezChat reports whether the desired child obj carries kc's
// controller reference: every child but the data under Retain. Applied
// without it, server-side apply removes a reference set before.
func ownedByKezChat(kc *chatv1.KezChat, obj client.Object) bool {
	if _, ok := obj.(*corev1.PersistentVolumeClaim); ok {
		return ownsData(kc)
	}
	return true
}

// madeFor reports whether obj, a volume claim or Secret, is data the
// operator made for kc: controlled by it, or, unowned, carrying the labels
// it was made with for a KezChat of kc's name.
func madeFor(obj client.Object, kc *chatv1.KezChat) bool {
	if metav1.IsControlledBy(obj, kc) {
		return true
	}
	l := obj.GetLabels()
	return metav1.GetControllerOf(obj) == nil && l[managedByLabel] == managedByValue &&
		l["app.kubernetes.io/instance"] == kc.Name && l["app.kubernetes.io/name"] == "kez-chat"
}

// ensureFinalizer puts dataFinalizer on kc before it has any data.
func (r *KezChatReconciler) ensureFinalizer(ctx context.Context, kc *chatv1.KezChat) error {
	if controllerutil.ContainsFinalizer(kc, dataFinalizer) {
		return nil
	}
	before := kc.DeepCopy()
	controllerutil.AddFinalizer(kc, dataFinalizer)
	if err := r.Client.Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("adding finalizer %s: %w", dataFinalizer, err)
	}
	return nil
}

// dataObjects are kc's data: the chat server's and the sig-server's
// volumes, the NATS pods' JetStream volumes, and the VAPID Secret the
// operator generated (its key is what every push subscription was made
// for); those made for kc (madeFor), and for NATS's, those with the NATS
// pods' labels (the StatefulSet made them).
func (r *KezChatReconciler) dataObjects(ctx context.Context, kc *chatv1.KezChat) ([]client.Object, error) {
	n := namesOf(kc)
	var objs []client.Object
	for _, name := range []string{n.serverData(), n.sigServerData()} {
		var pvc corev1.PersistentVolumeClaim
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: name}, &pvc); {
		case err == nil:
			if madeFor(&pvc, kc) {
				objs = append(objs, &pvc)
			}
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("reading PersistentVolumeClaim %s: %w", name, err)
		}
	}
	var nats corev1.PersistentVolumeClaimList
	if err := r.Client.List(ctx, &nats, client.InNamespace(kc.Namespace), client.MatchingLabels(selectorLabels(kc, componentNATS))); err != nil {
		return nil, fmt.Errorf("listing NATS's PersistentVolumeClaims: %w", err)
	}
	for i := range nats.Items {
		objs = append(objs, &nats.Items[i])
	}
	var vapid corev1.Secret
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: n.vapid()}, &vapid); {
	case err == nil:
		if madeFor(&vapid, kc) {
			objs = append(objs, &vapid)
		}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading VAPID Secret %s: %w", n.vapid(), err)
	}
	return objs, nil
}

// withoutOwners is refs less those naming kc or the NATS StatefulSet
// (which owns its volumes under a Delete claim retention policy).
func withoutOwners(refs []metav1.OwnerReference, kc *chatv1.KezChat) []metav1.OwnerReference {
	var out []metav1.OwnerReference
	for _, ref := range refs {
		if ref.UID == kc.UID || (ref.Kind == "StatefulSet" && ref.Name == namesOf(kc).nats()) {
			continue
		}
		out = append(out, ref)
	}
	return out
}

// finalize deals with a deleted kc's data as its deletion policy says,
// then lets it go.
func (r *KezChatReconciler) finalize(ctx context.Context, kc *chatv1.KezChat) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(kc, dataFinalizer) {
		return ctrl.Result{}, nil // the garbage collector removes the children
	}
	objs, err := r.dataObjects(ctx, kc)
	if err != nil {
		return ctrl.Result{}, err
	}
	var names []string
	for _, obj := range objs {
		kind := "PersistentVolumeClaim"
		if _, ok := obj.(*corev1.Secret); ok {
			kind = "Secret"
		}
		names = append(names, kind+" "+obj.GetName())
		if kc.Spec.DeletionPolicyOrDefault() == chatv1.DeletionDelete {
			uid := obj.GetUID()
			if err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
				return ctrl.Result{}, fmt.Errorf("deleting %s %s: %w", kind, obj.GetName(), err)
			}
			continue
		}
		refs := withoutOwners(obj.GetOwnerReferences(), kc)
		if len(refs) == len(obj.GetOwnerReferences()) {
			continue
		}
		before := obj.DeepCopyObject().(client.Object)
		obj.SetOwnerReferences(refs)
		if err := r.Client.Patch(ctx, obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("releasing %s %s from the KezChat: %w", kind, obj.GetName(), err)
		}
	}
	if len(names) > 0 {
		if kc.Spec.DeletionPolicyOrDefault() == chatv1.DeletionDelete {
			r.Recorder.Eventf(kc, nil, corev1.EventTypeNormal, ReasonDataDeleted, "Delete",
				"deletionPolicy Delete: deleted %v", names)
		} else {
			r.Recorder.Eventf(kc, nil, corev1.EventTypeNormal, ReasonDataRetained, "Delete",
				"deletionPolicy Retain: kept %v; a KezChat named %s in this namespace adopts them", names, kc.Name)
		}
	}
	before := kc.DeepCopy()
	controllerutil.RemoveFinalizer(kc, dataFinalizer)
	if err := r.Client.Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return ctrl.Result{}, nil
}

// generatedVAPIDFor reports whether s is the VAPID Secret the operator
// generated for kc, or for an earlier KezChat of kc's name whose deletion
// kept it.
func generatedVAPIDFor(s *corev1.Secret, kc *chatv1.KezChat) bool {
	return s.Name == namesOf(kc).vapid() && madeFor(s, kc) &&
		s.Labels["app.kubernetes.io/component"] == componentServer
}

// instanceOf is the KezChat an unowned object of the operator's (data kept
// under Retain) belongs to, by its labels, so that a change to it wakes
// that KezChat as an owned child's would.
func instanceOf(_ context.Context, obj client.Object) []reconcile.Request {
	l := obj.GetLabels()
	if metav1.GetControllerOf(obj) != nil || l[managedByLabel] != managedByValue || l["app.kubernetes.io/instance"] == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: l["app.kubernetes.io/instance"]}}}
}
