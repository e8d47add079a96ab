package controllers

import (
	"errors"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestImageVersion(t *testing.T) {
	for image, want := range map[string]string{
		"ghcr.io/kez-lat/kezchat:v0.2.0":                 "v0.2.0",
		"registry.example:5000/kezchat:e2e-1":            "e2e-1",
		"registry.example:5000/kezchat":                  "",
		"kezchat":                                        "",
		"ghcr.io/kez-lat/kezchat@sha256:abc":             "sha256:abc",
		"ghcr.io/kez-lat/kezchat:v1@sha256:abc":          "v1",
		"docker.io/library/nats:2.15.2-alpine":           "2.15.2-alpine",
		"localhost:5000/team/kezchat:v3-rc.1@sha256:0ff": "v3-rc.1",
	} {
		if got := imageVersion(image); got != want {
			t.Errorf("imageVersion(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestDecideUpgrade(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	started := metav1.NewTime(now.Add(-time.Minute))
	longAgo := metav1.NewTime(now.Add(-time.Hour))
	const old, next, newer = "kez:v1", "kez:v2", "kez:v3"
	const natsOld, natsNext = "nats:1", "nats:2"
	rec := func(phase chatv1.UpgradePhase, at *metav1.Time) *chatv1.UpgradeStatus {
		return &chatv1.UpgradeStatus{Phase: phase, Image: next, FromImage: old, StartedAt: at}
	}
	// base: the operator moved from v1 to v2; the KezChat runs v1.
	base := upgradeFacts{targetImage: next, runningImage: old, maxSlots: 1, now: now, timeout: 15 * time.Minute}
	tests := []struct {
		name      string
		facts     func(f *upgradeFacts)
		hold      bool
		phase     chatv1.UpgradePhase // "" for no upgrade status
		event     string
		msgSubstr string
	}{
		{name: "running the operator's images: nothing to do",
			facts: func(f *upgradeFacts) { f.runningImage = next }},
		{name: "a new KezChat starts at the target without a slot",
			facts: func(f *upgradeFacts) { f.runningImage = "" }},
		{name: "a pinned KezChat never upgrades",
			facts: func(f *upgradeFacts) { f.targetImage = "" }},
		{name: "no slot free: queued, keeping its images",
			hold: true, phase: chatv1.UpgradeQueued, event: ReasonUpgradeQueued, msgSubstr: "running kez:v1"},
		{name: "still queued: no second event",
			facts: func(f *upgradeFacts) {
				f.recorded = &chatv1.UpgradeStatus{Phase: chatv1.UpgradeQueued, Image: next, FromImage: old}
			},
			hold: true, phase: chatv1.UpgradeQueued},
		{name: "max 0: every upgrade waits",
			facts: func(f *upgradeFacts) { f.maxSlots = 0 },
			hold:  true, phase: chatv1.UpgradeQueued, event: ReasonUpgradeQueued},
		{name: "a slot free: rolls to the target",
			facts: func(f *upgradeFacts) { f.slotFree = true },
			phase: chatv1.UpgradeRolling, event: ReasonUpgradeStarted, msgSubstr: "rolling to kez:v2"},
		{name: "a slot free with a pre-upgrade hook: prepares first, keeping its images",
			facts: func(f *upgradeFacts) { f.slotFree, f.preparing = true, true },
			hold:  true, phase: chatv1.UpgradePreparing, event: ReasonUpgradeStarted},
		{name: "a NATS-only upgrade also takes a slot",
			facts: func(f *upgradeFacts) {
				f.runningImage, f.targetNATSImage, f.runningNATSImage, f.slotFree = next, natsNext, natsOld, true
			},
			phase: chatv1.UpgradeRolling, event: ReasonUpgradeStarted, msgSubstr: "NATS nats:2"},
		{name: "preparing, hook not done: holds its images and slot",
			facts: func(f *upgradeFacts) {
				f.recorded, f.preparing, f.prepareMessage = rec(chatv1.UpgradePreparing, &started), true, "backup running"
			},
			hold: true, phase: chatv1.UpgradePreparing, msgSubstr: "backup running"},
		{name: "preparing, hook done: rolls",
			facts: func(f *upgradeFacts) {
				f.recorded, f.preparing, f.prepared = rec(chatv1.UpgradePreparing, &started), true, true
			},
			phase: chatv1.UpgradeRolling},
		{name: "preparing, hook stopped (a failed backup): holds its images and slot, with a warning",
			facts: func(f *upgradeFacts) {
				f.recorded, f.preparing = rec(chatv1.UpgradePreparing, &started), true
				f.prepareStopped, f.prepareMessage = ReasonPreUpgradeBackupFailed, "KezChatBackup chat-pre-upgrade-x failed"
			},
			hold: true, phase: chatv1.UpgradePreparing, event: ReasonPreUpgradeBackupFailed, msgSubstr: "stopped before it started: KezChatBackup chat-pre-upgrade-x failed"},
		{name: "preparing, still stopped: no second event",
			facts: func(f *upgradeFacts) {
				f.recorded, f.preparing = rec(chatv1.UpgradePreparing, &started), true
				f.recorded.Message = "upgrade to kez:v2 stopped before it started: KezChatBackup chat-pre-upgrade-x failed"
				f.prepareStopped, f.prepareMessage = ReasonPreUpgradeBackupFailed, "KezChatBackup chat-pre-upgrade-x failed"
			},
			hold: true, phase: chatv1.UpgradePreparing},
		{name: "rolling, new pods not yet ready",
			facts: func(f *upgradeFacts) { f.recorded, f.atTarget = rec(chatv1.UpgradeRolling, &started), true },
			phase: chatv1.UpgradeRolling},
		{name: "rolling, old pods ready but the template not yet at the target: not done",
			facts: func(f *upgradeFacts) { f.recorded, f.rolledOut = rec(chatv1.UpgradeRolling, &started), true },
			phase: chatv1.UpgradeRolling},
		{name: "rolled out at the target: done, the slot freed",
			facts: func(f *upgradeFacts) {
				f.recorded, f.atTarget, f.rolledOut, f.runningImage = rec(chatv1.UpgradeRolling, &started), true, true, next
			},
			event: ReasonUpgradeSucceeded},
		{name: "progress deadline exceeded: failed, holding the slot",
			facts: func(f *upgradeFacts) {
				f.recorded, f.atTarget, f.rolloutFailed, f.rolloutMessage = rec(chatv1.UpgradeRolling, &started), true, true, "server: ProgressDeadlineExceeded"
			},
			phase: chatv1.UpgradeFailed, event: ReasonUpgradeFailed, msgSubstr: "ProgressDeadlineExceeded"},
		{name: "not ready within the timeout: failed",
			facts: func(f *upgradeFacts) { f.recorded, f.atTarget = rec(chatv1.UpgradeRolling, &longAgo), true },
			phase: chatv1.UpgradeFailed, event: ReasonUpgradeFailed, msgSubstr: "--upgrade-timeout"},
		{name: "failed stays failed, without a second event",
			facts: func(f *upgradeFacts) { f.recorded, f.atTarget = rec(chatv1.UpgradeFailed, &longAgo), true },
			phase: chatv1.UpgradeFailed},
		{name: "failed, then the rollout completes (the admin fixed it): done",
			facts: func(f *upgradeFacts) {
				f.recorded, f.atTarget, f.rolledOut = rec(chatv1.UpgradeFailed, &longAgo), true, true
			},
			event: ReasonUpgradeSucceeded},
		{name: "failed, then the admin pins the old image: cancelled, the slot freed",
			facts: func(f *upgradeFacts) { f.recorded, f.targetImage = rec(chatv1.UpgradeFailed, &longAgo), "" },
			event: ReasonUpgradeCancelled},
		{name: "failed, the admin pins the old image, NATS left to the operator but unchanged: cancelled",
			facts: func(f *upgradeFacts) {
				f.recorded, f.targetImage, f.targetNATSImage, f.runningNATSImage = rec(chatv1.UpgradeFailed, &longAgo), "", natsOld, natsOld
			},
			event: ReasonUpgradeCancelled},
		{name: "rolling both, the admin pins the server image: NATS goes on",
			facts: func(f *upgradeFacts) {
				f.recorded = &chatv1.UpgradeStatus{Phase: chatv1.UpgradeRolling, Image: next, FromImage: old, NATSImage: natsNext, FromNATSImage: natsOld, StartedAt: &started}
				f.targetImage, f.targetNATSImage, f.runningNATSImage = "", natsNext, natsOld
			},
			phase: chatv1.UpgradeRolling, msgSubstr: "NATS nats:2"},
		{name: "rolling when the operator moves on again: to the newest",
			facts: func(f *upgradeFacts) {
				f.recorded, f.targetImage, f.atTarget = rec(chatv1.UpgradeRolling, &started), newer, false
			},
			phase: chatv1.UpgradeRolling, msgSubstr: "kez:v3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := base
			if tt.facts != nil {
				tt.facts(&f)
			}
			d := decideUpgrade(f)
			if d.hold != tt.hold {
				t.Errorf("hold = %v, want %v", d.hold, tt.hold)
			}
			var phase chatv1.UpgradePhase
			if d.status != nil {
				phase = d.status.Phase
			}
			if phase != tt.phase {
				t.Errorf("phase = %q, want %q (%+v)", phase, tt.phase, d.status)
			}
			if d.eventReason != tt.event {
				t.Errorf("event = %q, want %q", d.eventReason, tt.event)
			}
			if tt.msgSubstr != "" && (d.status == nil || !strings.Contains(d.status.Message, tt.msgSubstr)) {
				t.Errorf("message %+v lacks %q", d.status, tt.msgSubstr)
			}
			if d.status != nil && d.status.Phase.HoldsSlot() && d.status.StartedAt == nil {
				t.Error("a slot taken without a start time")
			}
		})
	}
}

func TestUpgradeShowsInConditions(t *testing.T) {
	kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Generation: 1}}
	readyServer := &componentState{ready: true, reason: ReasonAvailable, image: "kez:v1"}
	tests := []struct {
		name                      string
		upgrade                   *chatv1.UpgradeStatus
		failure                   error
		ready, progress, degraded metav1.ConditionStatus
		reason                    string // of Progressing, or of Degraded when that is True
	}{
		{"queued", &chatv1.UpgradeStatus{Phase: chatv1.UpgradeQueued, Message: "waiting"}, nil, "True", "True", "False", ReasonUpgradeQueued},
		{"preparing", &chatv1.UpgradeStatus{Phase: chatv1.UpgradePreparing}, nil, "True", "True", "False", ReasonUpgradePreparing},
		{"rolling", &chatv1.UpgradeStatus{Phase: chatv1.UpgradeRolling}, nil, "True", "True", "False", ReasonUpgrading},
		{"failed", &chatv1.UpgradeStatus{Phase: chatv1.UpgradeFailed, Message: "stuck"}, nil, "False", "False", "True", ReasonUpgradeFailed},
		{"failed and a reconcile error: the error first", &chatv1.UpgradeStatus{Phase: chatv1.UpgradeFailed}, errors.New("boom"), "False", "False", "True", ReasonReconcileFailed},
		{"none", nil, nil, "True", "False", "False", ReasonAsExpected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := observed{server: readyServer, upgrade: &upgradeOutcome{decision: upgradeDecision{status: tt.upgrade}}}
			if tt.failure != nil {
				obs.failure, obs.failureReason = tt.failure, ReasonReconcileFailed
			}
			st := computeStatus(kc, obs)
			got := func(typ string) *metav1.Condition { return meta.FindStatusCondition(st.Conditions, typ) }
			if got(chatv1.ConditionReady).Status != tt.ready || got(chatv1.ConditionProgressing).Status != tt.progress ||
				got(chatv1.ConditionDegraded).Status != tt.degraded {
				t.Errorf("conditions %+v", st.Conditions)
			}
			reason := got(chatv1.ConditionProgressing).Reason
			if tt.degraded == "True" {
				reason = got(chatv1.ConditionDegraded).Reason
			}
			if reason != tt.reason {
				t.Errorf("reason %s, want %s", reason, tt.reason)
			}
			if (st.Upgrade == nil) != (tt.upgrade == nil) {
				t.Errorf("status.upgrade %+v", st.Upgrade)
			}
			if st.Server.Image != "kez:v1" || st.Server.Version != "v1" {
				t.Errorf("server image %q version %q", st.Server.Image, st.Server.Version)
			}
		})
	}
}

func TestStatusKeepsTheRunningImageWhileANewOneRolls(t *testing.T) {
	kc := &chatv1.KezChat{Status: chatv1.KezChatStatus{Server: &chatv1.ComponentStatus{Image: "kez:v1", Version: "v1"}}}
	st := computeStatus(kc, observed{server: &componentState{reason: ReasonRollingOut, message: "0 of 1 updated"}})
	if st.Server.Image != "kez:v1" || st.Server.Version != "v1" {
		t.Errorf("while rolling: %+v, want the previous image kept", st.Server)
	}
	st = computeStatus(kc, observed{server: &componentState{ready: true, image: "kez:v2"}})
	if st.Server.Image != "kez:v2" || st.Server.Version != "v2" {
		t.Errorf("rolled out: %+v", st.Server)
	}
}

func TestARecordedUpgradeSurvivesAReconcileThatStoppedEarly(t *testing.T) {
	held := &chatv1.UpgradeStatus{Phase: chatv1.UpgradeRolling}
	kc := &chatv1.KezChat{Status: chatv1.KezChatStatus{Upgrade: held}}
	st := computeStatus(kc, observed{failure: errors.New("apply failed"), failureReason: ReasonReconcileFailed})
	if st.Upgrade == nil || st.Upgrade.Phase != chatv1.UpgradeRolling {
		t.Errorf("the slot record was lost: %+v", st.Upgrade)
	}
}

func TestRunningImagesPreferTheRecordOverAHandEditedWorkload(t *testing.T) {
	w := workloads{server: deploymentWithImage("evil.example/backdoor:1")}
	kc := &chatv1.KezChat{Status: chatv1.KezChatStatus{Server: &chatv1.ComponentStatus{Image: "kez:v1"}}}
	if got := runningImages(kc, w).kez; got != "kez:v1" {
		t.Errorf("running image %q, want the recorded kez:v1", got)
	}
	kc.Status.Server = nil // an older operator's status: the workload tells
	if got := runningImages(kc, w).kez; got != "evil.example/backdoor:1" {
		t.Errorf("running image %q without a record", got)
	}
}

func deploymentWithImage(image string) *appsv1.Deployment {
	return &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "server", Image: image}},
	}}}}
}
