package controllers

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func init() {
	// The operator's scheme holds the PodMonitor kind (cmd/kezchat).
	if err := monitoringv1.AddToScheme(testScheme); err != nil {
		panic(err)
	}
}

func hasPodMonitorCRD(t *testing.T) bool {
	t.Helper()
	httpClient, err := rest.HTTPClientFor(testConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper, err := apiutil.NewDynamicRESTMapper(testConfig, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	found, err := HasPodMonitorCRD(mapper)
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// waitForMonitoringCondition waits until the KezChat named chat in ns has
// the Monitoring condition with status and reason ("absent": none).
func waitForMonitoringCondition(t *testing.T, ns string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	waitFor[chatv1.KezChat](t, ns, "chat", func(kc *chatv1.KezChat) error {
		c := meta.FindStatusCondition(kc.Status.Conditions, ConditionMonitoring)
		switch {
		case c == nil && status == "absent":
			return nil
		case c == nil:
			return fmt.Errorf("no Monitoring condition, want %s %s", status, reason)
		case c.Status != status || c.Reason != reason || c.ObservedGeneration != kc.Generation:
			return fmt.Errorf("Monitoring %s %s (generation %d of %d), want %s %s", c.Status, c.Reason, c.ObservedGeneration, kc.Generation, status, reason)
		}
		return nil
	})
}

// TestPodMonitorsFollowSpecMonitoringWhereThePrometheusOperatorIs: without
// the CRD, a KezChat asking for PodMonitors gets a Warning event and the
// Monitoring condition False, and the rest of it reconciled; with it, one PodMonitor per component is made,
// owned by the KezChat (Monitoring True), put back when deleted, not applied again while it holds, and deleted
// when the spec stops asking, with the condition.
func TestPodMonitorsFollowSpecMonitoringWhereThePrometheusOperatorIs(t *testing.T) {
	if hasPodMonitorCRD(t) {
		t.Fatal("the PodMonitor CRD is installed before the test installs it")
	}
	missing := testNamespace(t)
	startManager(t, missing)
	createKezChat(t, missing, withPodMonitors)
	waitFor[appsv1.Deployment](t, missing, "chat-server", nil)
	waitForEvents(t, missing, "KezChat", "chat", ReasonPrometheusOperatorMissing)
	waitForMonitoringCondition(t, missing, metav1.ConditionFalse, ReasonPrometheusOperatorMissing)

	crds, err := envtest.InstallCRDs(testConfig, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join("testdata", "prometheus-operator-crds")}, ErrorIfPathMissing: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { envtest.UninstallCRDs(testConfig, envtest.CRDInstallOptions{CRDs: crds}) })
	if !hasPodMonitorCRD(t) {
		t.Fatal("HasPodMonitorCRD does not find the installed CRD")
	}

	ns := testNamespace(t)
	m := startManager(t, ns, func(r *KezChatReconciler) { r.PrometheusOperator = true })
	kc := createKezChat(t, ns, withPodMonitors)
	for _, name := range []string{"chat-server", "chat-nats", "chat-sig-server"} {
		waitFor[monitoringv1.PodMonitor](t, ns, name, func(pm *monitoringv1.PodMonitor) error {
			if err := controlledBy(pm, getKezChat(t, ns)); err != nil {
				return err
			}
			if pm.Labels["release"] != "prom" || len(pm.Spec.PodMetricsEndpoints) != 1 || len(pm.Spec.PodMetricsEndpoints[0].RelabelConfigs) != 2 {
				return fmt.Errorf("PodMonitor %s as applied: %+v", name, pm)
			}
			return nil
		})
	}
	waitFor[appsv1.StatefulSet](t, ns, "chat-nats", func(sts *appsv1.StatefulSet) error {
		if cs := sts.Spec.Template.Spec.Containers; len(cs) != 2 || cs[1].Name != "nats-exporter" {
			return fmt.Errorf("containers %d, want nats and nats-exporter", len(cs))
		}
		return nil
	})
	waitFor[networkingv1.NetworkPolicy](t, ns, "chat-nats", func(np *networkingv1.NetworkPolicy) error {
		metricsPeers(t, np, natsExporterPort)
		return nil
	})

	waitForMonitoringCondition(t, ns, metav1.ConditionTrue, ReasonPodMonitorsApplied)

	// A PodMonitor deleted by hand comes back (the operator watches them).
	gone, err := get[monitoringv1.PodMonitor](ns, "chat-server")
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	waitFor[monitoringv1.PodMonitor](t, ns, "chat-server", func(pm *monitoringv1.PodMonitor) error {
		if pm.UID == gone.UID {
			return fmt.Errorf("not deleted yet")
		}
		return nil
	})

	// Held as applied: reconciles send no PodMonitor write.
	m.reconcileNow(t, kc)
	mark := m.requests.mark()
	m.reconcileNow(t, kc)
	for _, r := range m.requests.since(mark) {
		if strings.Contains(r, "podmonitors") && !strings.HasPrefix(r, "GET") {
			t.Errorf("a steady reconcile sent %s", r)
		}
	}

	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Monitoring.PodMonitor.Enabled = false })
	waitForMonitoringCondition(t, ns, "absent", "")
	for _, name := range []string{"chat-server", "chat-nats", "chat-sig-server"} {
		eventually(t, waitTimeout, "PodMonitor "+name+" deleted", func() error {
			if _, err := get[monitoringv1.PodMonitor](ns, name); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there: %v", err)
			}
			return nil
		})
	}
}
