package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// BackupMetrics exports, per KezChat with spec.backup, when its last
// backup completed, read from the manager's cache at each scrape: the
// alert on a backup that is too old (monitoring/rules.yaml) needs it. The
// labels are kezchat_namespace and kezchat, since the scrape gives every
// series of the operator its own namespace label.
type BackupMetrics struct {
	Reader client.Reader
}

var (
	backupConfiguredDesc = prometheus.NewDesc("kezchat_backup_configured",
		"1 for each KezChat with spec.backup.", []string{"kezchat_namespace", "kezchat"}, nil)
	backupLastSuccessDesc = prometheus.NewDesc("kezchat_backup_last_success_timestamp_seconds",
		"When the KezChat's latest successful backup completed (status.lastSuccessfulBackup), in Unix seconds.",
		[]string{"kezchat_namespace", "kezchat"}, nil)
)

func (m BackupMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- backupConfiguredDesc
	ch <- backupLastSuccessDesc
}

func (m BackupMetrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list chatv1.KezChatList
	if err := m.Reader.List(ctx, &list); err != nil {
		ch <- prometheus.NewInvalidMetric(backupConfiguredDesc, err)
		return
	}
	for i := range list.Items {
		kc := &list.Items[i]
		if kc.Spec.Backup == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(backupConfiguredDesc, prometheus.GaugeValue, 1, kc.Namespace, kc.Name)
		if last := kc.Status.LastSuccessfulBackup; last != nil {
			ch <- prometheus.MustNewConstMetric(backupLastSuccessDesc, prometheus.GaugeValue,
				float64(last.CompletedAt.Unix()), kc.Namespace, kc.Name)
		}
	}
}
