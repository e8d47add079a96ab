package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Reasons of the Paused condition and events.
const (
	ReasonPaused  = "Paused"
	ReasonResumed = "Resumed"
)

// notePaused says, once, in kc's status (Paused True) and in an event,
// that the pause annotation stops the operator. It writes nothing else:
// a paused KezChat's status stays what was last observed.
func (r *KezChatReconciler) notePaused(ctx context.Context, kc *chatv1.KezChat) error {
	if meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionPaused) {
		return nil
	}
	before := kc.DeepCopy()
	msg := fmt.Sprintf("the %s: %s annotation stops the operator; it changes nothing until the annotation is removed",
		chatv1.ReconcileAnnotation, chatv1.ReconcilePaused)
	meta.SetStatusCondition(&kc.Status.Conditions, metav1.Condition{
		Type: chatv1.ConditionPaused, Status: metav1.ConditionTrue, Reason: ReasonPaused, Message: msg, ObservedGeneration: kc.Generation,
	})
	if err := r.Client.Status().Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing the Paused condition: %w", err)
	}
	r.Recorder.Eventf(kc, nil, corev1.EventTypeNormal, ReasonPaused, "Pause", "%s", msg)
	return nil
}

// noteResumed says in an event that kc, paused until now, is reconciled
// again; computeStatus turns its Paused condition False.
func (r *KezChatReconciler) noteResumed(kc *chatv1.KezChat) {
	if meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionPaused) {
		r.Recorder.Eventf(kc, nil, corev1.EventTypeNormal, ReasonResumed, "Resume",
			"the %s annotation is gone: the operator reconciles this KezChat again", chatv1.ReconcileAnnotation)
	}
}

// resumedCondition is the Paused condition of a KezChat reconciled again
// after a pause; a KezChat never paused has none.
func resumedCondition(st *chatv1.KezChatStatus, gen int64) {
	if meta.FindStatusCondition(st.Conditions, chatv1.ConditionPaused) == nil {
		return
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: chatv1.ConditionPaused, Status: metav1.ConditionFalse, Reason: ReasonResumed,
		Message: "the operator reconciles this KezChat", ObservedGeneration: gen,
	})
}
