package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// preUpgradeBackups are the pre-upgrade KezChatBackups in ns.
func preUpgradeBackups(t *testing.T, ns string) []chatv1.KezChatBackup {
	t.Helper()
	var list chatv1.KezChatBackupList
	if err := k8s.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{preUpgradeLabel: "true"}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// upgradeChatWithBackup runs an operator of imageV1 until the KezChat chat
// (shaped by mutate) is Ready, then one of imageV2, returned.
func upgradeChatWithBackup(t *testing.T, ns string, configure func(*KezChatReconciler), mutate ...func(*chatv1.KezChat)) *runningManager {
	t.Helper()
	m := startManager(t, ns, operatorAt(imageV1, 1))
	createChat(t, ns, "chat", mutate...)
	markChatReady(t, ns, "chat")
	waitChat(t, ns, "chat", readyAt("v1"))
	m.stop()
	if configure == nil {
		return startManager(t, ns, operatorAt(imageV2, 1))
	}
	return startManager(t, ns, operatorAt(imageV2, 1), configure)
}

// preparingFor waits until chat is Preparing with a message containing
// substr, and checks it still runs imageV1.
func preparingFor(t *testing.T, ns, substr string) *chatv1.KezChat {
	t.Helper()
	kc := waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		if upgradePhase(kc) != chatv1.UpgradePreparing || !strings.Contains(kc.Status.Upgrade.Message, substr) {
			return fmt.Errorf("upgrade %+v", kc.Status.Upgrade)
		}
		return nil
	})
	if img, err := serverImage(ns, "chat"); err != nil || img != imageV1 {
		t.Fatalf("chat runs %s (%v) while it prepares", img, err)
	}
	return kc
}

// rolledToV2 waits until chat rolls to imageV2 and, its pods Ready, has
// finished its upgrade.
func rolledToV2(t *testing.T, ns string) {
	t.Helper()
	waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		if img, err := serverImage(ns, "chat"); err != nil || img != imageV2 {
			return fmt.Errorf("image %s (%v), upgrade %+v", img, err, kc.Status.Upgrade)
		}
		return nil
	})
	markChatReady(t, ns, "chat")
	waitChat(t, ns, "chat", readyAt("v2"))
}

func TestAnUpgradeWithBackupsConfiguredBacksUpFirstThenRolls(t *testing.T) {
	ns := testNamespace(t)
	upgradeChatWithBackup(t, ns, nil, withBackup)

	kc := preparingFor(t, ns, "waiting for pre-upgrade KezChatBackup")
	backups := preUpgradeBackups(t, ns)
	if len(backups) != 1 {
		t.Fatalf("%d pre-upgrade backups, want 1", len(backups))
	}
	b := backups[0]
	if b.Name != preUpgradeBackupName(kc, kc.Status.Upgrade) || !metav1.IsControlledBy(&b, kc) ||
		b.Spec.KezChat.Name != "chat" || b.Annotations[upgradeTargetAnnotation] != imageV2 {
		t.Errorf("pre-upgrade backup %s: owners %+v, spec %+v, annotations %v", b.Name, b.OwnerReferences, b.Spec, b.Annotations)
	}

	b = *waitForBackupPhase(t, ns, b.Name, chatv1.BackupRunning)
	// The backup is taken by the version that wrote the data.
	for _, part := range []string{"server", "sigserver"} {
		job := waitFor[batchv1.Job](t, ns, b.Name+"-"+part, nil)
		if img := job.Spec.Template.Spec.Containers[0].Image; img != imageV1 {
			t.Errorf("Job %s runs %s, want the running %s", job.Name, img, imageV1)
		}
	}
	finishBackupJob(t, ns, b.Name+"-server", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "server", 4096))
	waitFor[chatv1.KezChatBackup](t, ns, b.Name, func(b *chatv1.KezChatBackup) error {
		if b.Status.Parts[0].Phase != chatv1.BackupCompleted {
			return fmt.Errorf("parts %+v", b.Status.Parts)
		}
		return nil
	})
	// Half a backup is no backup: the KezChat still waits.
	preparingFor(t, ns, "(Running)")

	finishBackupJob(t, ns, b.Name+"-sigserver", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "sigserver", 512))
	waitForBackupPhase(t, ns, b.Name, chatv1.BackupCompleted)
	// The backup's end wakes the KezChat: it rolls sooner than its own
	// recheck would have it.
	eventually(t, preparingRecheck-2e9, "chat rolling once its backup completed", func() error {
		if img, err := serverImage(ns, "chat"); err != nil || img != imageV2 {
			return fmt.Errorf("image %s (%v)", img, err)
		}
		return nil
	})
	rolledToV2(t, ns)
	if n := len(preUpgradeBackups(t, ns)); n != 1 {
		t.Errorf("%d pre-upgrade backups after the upgrade, want the 1", n)
	}
}

func TestAFailedPreUpgradeBackupHoldsTheUpgradeUntilRetriedOrSkipped(t *testing.T) {
	ns := testNamespace(t)
	upgradeChatWithBackup(t, ns, nil, withBackup)

	preparingFor(t, ns, "waiting for pre-upgrade KezChatBackup")
	b := preUpgradeBackups(t, ns)[0]
	b = *waitForBackupPhase(t, ns, b.Name, chatv1.BackupRunning)
	waitFor[batchv1.Job](t, ns, b.Name+"-sigserver", nil)
	finishBackupJob(t, ns, b.Name+"-server", corev1.PodFailed, `{"error":"uploading manifest.json: 403 AccessDenied"}`)
	waitForBackupPhase(t, ns, b.Name, chatv1.BackupFailed)

	// The upgrade stops there: old images, slot held, Degraded saying why
	// and how to go on, and a warning.
	kc := waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != ReasonPreUpgradeBackupFailed {
			return fmt.Errorf("Degraded %+v", c)
		}
		return nil
	})
	if img, err := serverImage(ns, "chat"); err != nil || img != imageV1 {
		t.Fatalf("chat runs %s (%v) after its pre-upgrade backup failed", img, err)
	}
	if u := kc.Status.Upgrade; u == nil || !u.Phase.HoldsSlot() || u.Phase != chatv1.UpgradePreparing ||
		!strings.Contains(u.Message, "403 AccessDenied") || !strings.Contains(u.Message, "beforeUpgrade: false") {
		t.Errorf("upgrade %+v", u)
	}
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionProgressing); c.Status != metav1.ConditionFalse {
		t.Errorf("Progressing %+v", c)
	}
	waitForEvents(t, ns, "KezChat", "chat", ReasonPreUpgradeBackupFailed)

	// Retry: deleting the failed backup takes another, of the same name.
	if err := k8s.Delete(ctx, &b); err != nil {
		t.Fatal(err)
	}
	collectJobs(t, ns, &b)
	retry := waitFor[chatv1.KezChatBackup](t, ns, b.Name, func(nb *chatv1.KezChatBackup) error {
		if nb.UID == b.UID {
			return fmt.Errorf("still the failed one")
		}
		return nil
	})
	preparingFor(t, ns, "waiting for pre-upgrade KezChatBackup "+b.Name)
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "False"})
	retry = waitForBackupPhase(t, ns, retry.Name, chatv1.BackupRunning)
	finishBackupJob(t, ns, b.Name+"-server", corev1.PodFailed, `{"error":"uploading manifest.json: 403 AccessDenied"}`)
	waitForBackupPhase(t, ns, retry.Name, chatv1.BackupFailed)
	preparingFor(t, ns, "403 AccessDenied")

	// Skip: beforeUpgrade: false lets the upgrade go on without one.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Backup.BeforeUpgrade = ptr.To(false) })
	rolledToV2(t, ns)
	if n := len(preUpgradeBackups(t, ns)); n != 1 {
		t.Errorf("%d pre-upgrade backups, want only the failed retry", n)
	}
}

// collectJobs plays the garbage collector, which envtest does not run,
// for the Jobs of a deleted backup and their pods.
func collectJobs(t *testing.T, ns string, owner metav1.Object) {
	t.Helper()
	var jobs batchv1.JobList
	if err := k8s.List(ctx, &jobs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs.Items {
		if !metav1.IsControlledBy(&j, owner) {
			continue
		}
		if err := k8s.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns), client.MatchingLabels{jobNameLabel: j.Name}); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Delete(ctx, &j, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
	}
}

// countingHook counts the calls of a PreUpgradeBackup's Prepare.
type countingHook struct {
	*PreUpgradeBackup
	calls atomic.Int32
}

func (h *countingHook) Prepare(ctx context.Context, kc *chatv1.KezChat) (bool, string, error) {
	h.calls.Add(1)
	return h.PreUpgradeBackup.Prepare(ctx, kc)
}

func TestWithoutBackupsOrWithBeforeUpgradeFalseAnUpgradeRollsAtOnce(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*chatv1.KezChat)
	}{
		{"no spec.backup", func(*chatv1.KezChat) {}},
		{"beforeUpgrade false", func(kc *chatv1.KezChat) {
			withBackup(kc)
			kc.Spec.Backup.BeforeUpgrade = ptr.To(false)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := testNamespace(t)
			var hook *countingHook
			upgradeChatWithBackup(t, ns, func(r *KezChatReconciler) {
				hook = &countingHook{PreUpgradeBackup: r.PreUpgrade.(*PreUpgradeBackup)}
				r.PreUpgrade = hook
			}, tt.mutate)
			rolledToV2(t, ns)
			if n := len(preUpgradeBackups(t, ns)); n != 0 {
				t.Errorf("%d pre-upgrade backups, want none", n)
			}
			// Straight to Rolling: the hook was never asked, so there was
			// no Preparing round trip.
			if n := hook.calls.Load(); n != 0 {
				t.Errorf("the hook was asked %d times", n)
			}
		})
	}
}
