package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// A cluster with the Prometheus Operator's PodMonitor CRD: a KezChat
// with spec.monitoring gets a PodMonitor per component, its NATS pods the
// exporter beside the server, and metrics ports that only the scrapers'
// namespace reaches.
func TestKezChatMonitorsOnALocalControlPlane(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()

	// The CRD first: the operator looks for PodMonitors when it starts.
	c.run(t, "kubectl", "apply", "--server-side", "-f", "../controllers/testdata/prometheus-operator-crds", "-f", "../config/crd/bases")
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat", "podmonitors.monitoring.coreos.com")
	c.runOperator(t, kezchatBinary(t))

	const ns, name = "watched", "watched"
	c.run(t, "kubectl", "create", "namespace", ns)
	c.apply(t, ns, `apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: watched
spec:
  domain: watched.example.org
  monitoring:
    podMonitor:
      enabled: true
      labels:
        release: kube-prometheus-stack
    scraperNamespace: prometheus
`)
	kc := c.waitReady(t, ns, name)
	if !meta.IsStatusConditionTrue(kc.Status.Conditions, "Monitoring") {
		t.Errorf("the Monitoring condition: %+v", meta.FindStatusCondition(kc.Status.Conditions, "Monitoring"))
	}

	var monitors unstructured.UnstructuredList
	monitors.SetGroupVersionKind(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PodMonitorList"})
	eventually(t, stepTimeout, "a PodMonitor per component", func() error {
		if err := c.client.List(ctx, &monitors, client.InNamespace(ns)); err != nil {
			return err
		}
		var names []string
		for _, m := range monitors.Items {
			if m.GetLabels()["release"] != "kube-prometheus-stack" || len(m.GetOwnerReferences()) != 1 || m.GetOwnerReferences()[0].Name != name {
				return fmt.Errorf("PodMonitor %s: labels %v, owners %v", m.GetName(), m.GetLabels(), m.GetOwnerReferences())
			}
			names = append(names, m.GetName())
		}
		slices.Sort(names)
		if want := []string{"watched-nats", "watched-server", "watched-sig-server"}; !slices.Equal(names, want) {
			return fmt.Errorf("PodMonitors %v, want %v", names, want)
		}
		return nil
	})

	// NATS's exporter runs beside each NATS server.
	var nats appsv1.StatefulSet
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "watched-nats"}, &nats); err != nil {
		t.Fatal(err)
	}
	var containers []string
	for _, ctr := range nats.Spec.Template.Spec.Containers {
		containers = append(containers, ctr.Name)
	}
	if !slices.Contains(containers, "nats-exporter") {
		t.Errorf("NATS pods run %v, no nats-exporter", containers)
	}
	// Every metrics port admits the scrapers' namespace alone.
	for _, policy := range []string{"watched-server", "watched-sig-server", "watched-nats"} {
		var np networkingv1.NetworkPolicy
		if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: policy}, &np); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port == nil || (p.Port.IntVal != 9469 && p.Port.IntVal != 9470 && p.Port.IntVal != 7777) {
					continue
				}
				found = true
				if len(rule.From) != 1 || rule.From[0].NamespaceSelector == nil ||
					rule.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "prometheus" {
					t.Errorf("%s: metrics port %d admits %+v", policy, p.Port.IntVal, rule.From)
				}
			}
		}
		if !found {
			t.Errorf("%s admits no metrics port", policy)
		}
	}
}
