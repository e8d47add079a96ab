package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// kstatusConditions sets the kstatus conditions from those computeStatus
// set: Stalled True while Degraded is, Reconciling True while Progressing
// is and nothing is stalled (kstatus wants never both), each False
// otherwise. So kstatus readers (Flux's health checks, cli-utils, kubectl
// wait) see a KezChat InProgress while it rolls out, Failed when it needs
// a person, and Current when it is Ready.
func kstatusConditions(st *chatv1.KezChatStatus, gen int64) {
	progressing := meta.FindStatusCondition(st.Conditions, chatv1.ConditionProgressing)
	degraded := meta.FindStatusCondition(st.Conditions, chatv1.ConditionDegraded)
	if progressing == nil || degraded == nil {
		return
	}
	set := func(typ string, from *metav1.Condition, status metav1.ConditionStatus) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: typ, Status: status, Reason: from.Reason, Message: from.Message, ObservedGeneration: gen,
		})
	}
	set(chatv1.ConditionStalled, degraded, degraded.Status)
	if degraded.Status == metav1.ConditionTrue {
		set(chatv1.ConditionReconciling, degraded, metav1.ConditionFalse)
	} else {
		set(chatv1.ConditionReconciling, progressing, progressing.Status)
	}
}
