package controllers

import (
	"errors"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func deployment(gen int64, st appsv1.DeploymentStatus) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "d", Generation: gen}, Status: st}
}

func TestDeploymentState(t *testing.T) {
	tests := []struct {
		name        string
		d           *appsv1.Deployment
		desired     int32
		ready, fail bool
		reason      string
	}{
		{"missing", nil, 1, false, false, ReasonNotCreated},
		{"spec not yet seen", deployment(2, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}), 1, false, false, ReasonRollingOut},
		{"no replica updated", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1}), 1, false, false, ReasonRollingOut},
		{"old replica left", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 2}), 1, false, false, ReasonRollingOut},
		{"updated, not available", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1}), 1, false, false, ReasonRollingOut},
		{"available", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}), 2, true, false, ReasonAvailable},
		{"scaled to zero", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1}), 0, true, false, ReasonScaledToZero},
		{"deadline exceeded", deployment(1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, Conditions: []appsv1.DeploymentCondition{{
			Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded", Message: "stuck",
		}}}), 1, false, true, ReasonRolloutFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := deploymentState(tt.d, tt.desired)
			if s.ready != tt.ready || s.failed != tt.fail || s.reason != tt.reason {
				t.Errorf("got ready=%v failed=%v reason=%s (%s), want ready=%v failed=%v reason=%s",
					s.ready, s.failed, s.reason, s.message, tt.ready, tt.fail, tt.reason)
			}
		})
	}
}

func TestStatefulSetState(t *testing.T) {
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Generation: 1}, Status: appsv1.StatefulSetStatus{
		ObservedGeneration: 1, Replicas: 3, ReadyReplicas: 3, UpdatedReplicas: 3, CurrentRevision: "a", UpdateRevision: "b",
	}}
	if s := statefulSetState(sts, 3); s.ready {
		t.Error("ready while the current revision is not the update revision")
	}
	sts.Status.CurrentRevision = "b"
	if s := statefulSetState(sts, 3); !s.ready || s.replicas.ReadyReplicas != 3 {
		t.Errorf("not ready when all replicas are: %+v", s)
	}
}

func conditionStatus(st chatv1.KezChatStatus, typ string) metav1.ConditionStatus {
	c := meta.FindStatusCondition(st.Conditions, typ)
	if c == nil {
		return "absent"
	}
	return c.Status
}

func TestComputeStatus(t *testing.T) {
	ready := &componentState{ready: true, reason: ReasonAvailable, replicas: chatv1.ComponentStatus{Replicas: 1, ReadyReplicas: 1}}
	pending := &componentState{reason: ReasonRollingOut, message: "0 of 1", replicas: chatv1.ComponentStatus{Replicas: 1}}
	failed := &componentState{failed: true, reason: ReasonRolloutFailed, message: "stuck"}
	tests := []struct {
		name                         string
		obs                          observed
		ready, progressing, degraded metav1.ConditionStatus
		nats                         metav1.ConditionStatus
	}{
		{"all ready", observed{server: ready, nats: ready, sigServer: ready}, "True", "False", "False", "True"},
		{"one pending", observed{server: ready, nats: pending, sigServer: ready}, "False", "True", "False", "False"},
		{"disabled component has no condition", observed{server: ready}, "True", "False", "False", "absent"},
		{"a failed rollout degrades", observed{server: failed, nats: ready}, "False", "False", "True", "True"},
		{"a reconcile error degrades", observed{server: ready, failure: errors.New("boom"), failureReason: ReasonReconcileFailed}, "False", "False", "True", "absent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat()
			kc.Generation = 7
			st := computeStatus(kc, tt.obs)
			for typ, want := range map[string]metav1.ConditionStatus{
				chatv1.ConditionReady: tt.ready, chatv1.ConditionProgressing: tt.progressing,
				chatv1.ConditionDegraded: tt.degraded, chatv1.ConditionNATSReady: tt.nats,
			} {
				if got := conditionStatus(st, typ); got != want {
					t.Errorf("%s = %s, want %s", typ, got, want)
				}
			}
			for _, c := range st.Conditions {
				if c.ObservedGeneration != 7 {
					t.Errorf("%s observedGeneration %d, want 7", c.Type, c.ObservedGeneration)
				}
			}
			if st.ObservedGeneration != 7 || st.URL != "http://chat.example.org" {
				t.Errorf("observedGeneration %d URL %q", st.ObservedGeneration, st.URL)
			}
			if (tt.obs.nats == nil) != (st.NATS == nil) {
				t.Errorf("NATS counts %+v for component %+v", st.NATS, tt.obs.nats)
			}
		})
	}
}

func TestComputeStatusKeepsTransitionTimes(t *testing.T) {
	kc := newKezChat()
	obs := observed{server: &componentState{ready: true, reason: ReasonAvailable}}
	kc.Status = computeStatus(kc, obs)
	then := metav1.NewTime(kc.Status.Conditions[0].LastTransitionTime.Add(-3600e9))
	for i := range kc.Status.Conditions {
		kc.Status.Conditions[i].LastTransitionTime = then
	}
	again := computeStatus(kc, obs)
	for _, c := range again.Conditions {
		if !c.LastTransitionTime.Equal(&then) {
			t.Errorf("%s transition time moved though its status held", c.Type)
		}
	}
}
