package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// TestBackupMetricsExportLastSuccessPerBackedUpKezChat: a KezChat with
// spec.backup counts as configured, its last success time appears once
// its status has one, and a KezChat without spec.backup exports nothing.
func TestBackupMetricsExportLastSuccessPerBackedUpKezChat(t *testing.T) {
	ctx := context.Background()
	ns := testNamespace(t)
	backedUp := newKezChat(withBackup)
	backedUp.Namespace, backedUp.Name = ns, "backed"
	plain := newKezChat()
	plain.Namespace, plain.Name = ns, "plain"
	for _, kc := range []*chatv1.KezChat{backedUp, plain} {
		kc.Generation = 0
		if err := k8s.Create(ctx, kc); err != nil {
			t.Fatal(err)
		}
	}
	m := BackupMetrics{Reader: client.NewNamespacedClient(k8s, ns)}

	want := `
# HELP kezchat_backup_configured 1 for each KezChat with spec.backup.
# TYPE kezchat_backup_configured gauge
kezchat_backup_configured{kezchat="backed",kezchat_namespace="` + ns + `"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want)); err != nil {
		t.Errorf("before any backup: %v", err)
	}

	completed := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	backedUp.Status.LastSuccessfulBackup = &chatv1.BackupRecord{Name: "b1", BackupID: "20261201T030000Z", CompletedAt: metav1.NewTime(completed)}
	if err := k8s.Status().Update(ctx, backedUp); err != nil {
		t.Fatal(err)
	}
	want += `# HELP kezchat_backup_last_success_timestamp_seconds When the KezChat's latest successful backup completed (status.lastSuccessfulBackup), in Unix seconds.
# TYPE kezchat_backup_last_success_timestamp_seconds gauge
kezchat_backup_last_success_timestamp_seconds{kezchat="backed",kezchat_namespace="` + ns + `"} 1.796094e+09
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want)); err != nil {
		t.Errorf("after a backup: %v", err)
	}
}
