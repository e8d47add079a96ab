package controllers

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestPreUpgradeBackupIsNeededOnlyWithBackupsAndNotOptedOut(t *testing.T) {
	tests := []struct {
		name   string
		backup *chatv1.BackupSpec
		want   bool
	}{
		{"no spec.backup", nil, false},
		{"spec.backup, beforeUpgrade unset: default true", &chatv1.BackupSpec{}, true},
		{"beforeUpgrade true", &chatv1.BackupSpec{BeforeUpgrade: ptr.To(true)}, true},
		{"beforeUpgrade false", &chatv1.BackupSpec{BeforeUpgrade: ptr.To(false)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := &chatv1.KezChat{Spec: chatv1.KezChatSpec{Backup: tt.backup}}
			if got := (&PreUpgradeBackup{}).Needed(kc); got != tt.want {
				t.Errorf("Needed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPreUpgradeBackupNameIsOnePerTargetAndFitsALabel(t *testing.T) {
	kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "chat"}}
	v2 := &chatv1.UpgradeStatus{Image: "kez:v2", FromImage: "kez:v1"}
	name := preUpgradeBackupName(kc, v2)
	if !strings.HasPrefix(name, "chat-pre-upgrade-") {
		t.Errorf("name %q", name)
	}
	// The same target, whatever else the status says: the same backup.
	same := &chatv1.UpgradeStatus{Phase: chatv1.UpgradePreparing, Image: "kez:v2", FromImage: "kez:v0", Message: "x"}
	if got := preUpgradeBackupName(kc, same); got != name {
		t.Errorf("same target named %q and %q", name, got)
	}
	for _, other := range []*chatv1.UpgradeStatus{
		{Image: "kez:v3"},
		{Image: "kez:v2", NATSImage: "nats:2"},
		{NATSImage: "kez:v2"}, // the images' roles count, not just their text
	} {
		if got := preUpgradeBackupName(kc, other); got == name {
			t.Errorf("target %+v shares the name %q", other, got)
		}
	}
	long := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("a", 46) + "-" + strings.Repeat("b", 16)}}
	n := preUpgradeBackupName(long, v2)
	if len(n) > 63 || !strings.HasPrefix(n, strings.Repeat("a", 40)) || strings.Contains(n, "--") {
		t.Errorf("long name %q (%d)", n, len(n))
	}
	b := preUpgradeBackup(long, v2)
	if b.Labels[preUpgradeLabel] != "true" || b.Labels["app.kubernetes.io/instance"] != long.Name ||
		b.Spec.KezChat.Name != long.Name || b.Annotations[upgradeTargetAnnotation] != "kez:v2" {
		t.Errorf("backup %+v", b)
	}
}

func TestPreUpgradeProgressFollowsTheBackupsPhase(t *testing.T) {
	tests := []struct {
		phase       chatv1.BackupPhase
		message     string
		done        bool
		stopped     bool
		wantMessage string
	}{
		{phase: "", wantMessage: "waiting for pre-upgrade KezChatBackup chat-pre-upgrade-x (Pending)"},
		{phase: chatv1.BackupPending, message: "waiting for KezChatBackup nightly of the same KezChat to finish",
			wantMessage: "(Pending): waiting for KezChatBackup nightly"},
		{phase: chatv1.BackupRunning, wantMessage: "(Running)"},
		{phase: chatv1.BackupCompleted, done: true},
		{phase: chatv1.BackupFailed, message: "server: 403 AccessDenied", stopped: true,
			wantMessage: "chat-pre-upgrade-x failed: server: 403 AccessDenied; delete it to take another, or set spec.backup.beforeUpgrade: false"},
	}
	for _, tt := range tests {
		t.Run(string(tt.phase), func(t *testing.T) {
			b := &chatv1.KezChatBackup{ObjectMeta: metav1.ObjectMeta{Name: "chat-pre-upgrade-x"},
				Status: chatv1.KezChatBackupStatus{Phase: tt.phase, Message: tt.message}}
			done, msg, stopped := preUpgradeProgress(b)
			if done != tt.done || (stopped != nil) != tt.stopped {
				t.Fatalf("done %v, stopped %v", done, stopped)
			}
			if stopped != nil {
				if stopped.Reason != ReasonPreUpgradeBackupFailed {
					t.Errorf("reason %q", stopped.Reason)
				}
				msg = stopped.Message
			}
			if !strings.Contains(msg, tt.wantMessage) {
				t.Errorf("message %q lacks %q", msg, tt.wantMessage)
			}
		})
	}
}

func TestAnUpgradeStoppedBeforeItStartedIsDegradedWhileWhatRunsStaysReady(t *testing.T) {
	kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Generation: 1}}
	up := &chatv1.UpgradeStatus{Phase: chatv1.UpgradePreparing, Message: "upgrade to kez:v2 stopped before it started: backup failed"}
	st := computeStatus(kc, observed{
		server:  &componentState{ready: true, reason: ReasonAvailable, image: "kez:v1"},
		upgrade: &upgradeOutcome{decision: upgradeDecision{hold: true, status: up, stalledReason: ReasonPreUpgradeBackupFailed}},
	})
	degraded := meta.FindStatusCondition(st.Conditions, chatv1.ConditionDegraded)
	if degraded.Status != metav1.ConditionTrue || degraded.Reason != ReasonPreUpgradeBackupFailed || degraded.Message != up.Message {
		t.Errorf("Degraded %+v", degraded)
	}
	if c := meta.FindStatusCondition(st.Conditions, chatv1.ConditionProgressing); c.Status != metav1.ConditionFalse {
		t.Errorf("Progressing %+v: nothing progresses until the admin acts", c)
	}
	if c := meta.FindStatusCondition(st.Conditions, chatv1.ConditionReady); c.Status != metav1.ConditionTrue {
		t.Errorf("Ready %+v: the instance runs as before", c)
	}
	if st.Upgrade == nil || st.Upgrade.Phase != chatv1.UpgradePreparing {
		t.Errorf("upgrade %+v, want it still Preparing, holding its slot", st.Upgrade)
	}
}
