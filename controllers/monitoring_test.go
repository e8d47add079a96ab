package controllers

import (
	"reflect"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func withPodMonitors(kc *chatv1.KezChat) {
	kc.Spec.Monitoring = &chatv1.MonitoringSpec{PodMonitor: chatv1.PodMonitorSpec{
		Enabled: true, Labels: map[string]string{"release": "prom"}, Interval: "30s",
	}}
}

func TestPodMonitorsOnePerComponentThatRuns(t *testing.T) {
	for _, tc := range []struct {
		name string
		kc   *chatv1.KezChat
		want []string
	}{
		{"no spec.monitoring", newKezChat(), nil},
		{"monitoring without PodMonitors", newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Monitoring = &chatv1.MonitoringSpec{} }), nil},
		{"every component", newKezChat(withPodMonitors), []string{"chat-server", "chat-nats", "chat-sig-server"}},
		{"NATS and sig-server off", newKezChat(withPodMonitors, func(kc *chatv1.KezChat) {
			kc.Spec.NATS.Enabled = ptr.To(false)
			kc.Spec.SigServer.Enabled = ptr.To(false)
		}), []string{"chat-server"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, o := range podMonitors(tc.kc) {
				got = append(got, o.GetName())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("PodMonitors %v, want %v", got, tc.want)
			}
			// What is not wanted is deleted: together they name all three.
			if n := len(got) + len(unwantedPodMonitors(tc.kc)); n != 3 {
				t.Errorf("wanted and unwanted PodMonitors number %d, want 3", n)
			}
		})
	}
}

func TestPodMonitorScrapesTheMetricsPortWithTheLabelsTheRulesGroupBy(t *testing.T) {
	kc := newKezChat(withPodMonitors)
	pm := podMonitors(kc)[1].(*monitoringv1.PodMonitor)
	if !reflect.DeepEqual(pm.Spec.Selector.MatchLabels, selectorLabels(kc, componentNATS)) {
		t.Errorf("selector %v", pm.Spec.Selector.MatchLabels)
	}
	if pm.Labels["release"] != "prom" || pm.Labels[managedByLabel] != managedByValue {
		t.Errorf("labels %v lack the spec's and the operator's", pm.Labels)
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if *ep.Port != "metrics" || ep.Interval != "30s" {
		t.Errorf("endpoint port %s interval %s", *ep.Port, ep.Interval)
	}
	targets := map[string]string{}
	for _, r := range ep.RelabelConfigs {
		targets[r.TargetLabel] = string(r.SourceLabels[0])
	}
	want := map[string]string{
		"kezchat":   "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
		"component": "__meta_kubernetes_pod_label_app_kubernetes_io_component",
	}
	if !reflect.DeepEqual(targets, want) {
		t.Errorf("relabelings %v, want %v", targets, want)
	}
}

// A user's label of the operator's own name does not take the
// PodMonitor out of the operator's cache (which holds only what is
// labelled managed by it), nor move it to another instance.
func TestPodMonitorLabelsFromTheSpecDoNotOverrideTheOperators(t *testing.T) {
	kc := newKezChat(withPodMonitors, func(kc *chatv1.KezChat) {
		kc.Spec.Monitoring.PodMonitor.Labels = map[string]string{
			managedByLabel: "someone-else", "app.kubernetes.io/instance": "other", "release": "prom",
		}
	})
	for _, obj := range podMonitors(kc) {
		l := obj.GetLabels()
		if l[managedByLabel] != managedByValue || l["app.kubernetes.io/instance"] != kc.Name || l["release"] != "prom" {
			t.Errorf("%s labels %v", obj.GetName(), l)
		}
	}
}

func TestNATSExporterRunsBesideNATSOnlyWithSpecMonitoring(t *testing.T) {
	plain := natsStatefulSet(newKezChat(), testInputs)
	if n := len(plain.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("%d containers without spec.monitoring, want 1", n)
	}
	sts := natsStatefulSet(newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Monitoring = &chatv1.MonitoringSpec{} }), testInputs)
	cs := sts.Spec.Template.Spec.Containers
	if len(cs) != 2 || cs[1].Name != "nats-exporter" {
		t.Fatalf("containers %v, want nats and nats-exporter", cs)
	}
	e := cs[1]
	if e.Image != testInputs.DefaultImage || e.Args[0] != "nats-exporter" || e.Ports[0].Name != "metrics" {
		t.Errorf("exporter runs %s %v on %v", e.Image, e.Args, e.Ports)
	}
	sc := e.SecurityContext
	if !*sc.ReadOnlyRootFilesystem || !*sc.RunAsNonRoot || *sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 {
		t.Errorf("exporter security context %+v", sc)
	}
	if e.Resources.Limits.Memory().IsZero() {
		t.Error("exporter has no memory limit")
	}
}

// metricsPeers is who a NetworkPolicy admits to port.
func metricsPeers(t *testing.T, np *networkingv1.NetworkPolicy, port int32) []networkingv1.NetworkPolicyPeer {
	t.Helper()
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port.IntVal == port {
				return r.From
			}
		}
	}
	t.Fatalf("NetworkPolicy %s does not admit port %d", np.Name, port)
	return nil
}

func TestMetricsPortsAdmitOnlyTheScraperNamespace(t *testing.T) {
	for _, tc := range []struct {
		name, scraper string
		want          string // "" : anyone
	}{
		{"default", "", "monitoring"},
		{"named", "observability", "observability"},
		{"anyone", "*", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Monitoring = &chatv1.MonitoringSpec{ScraperNamespace: tc.scraper} })
			for _, c := range []struct {
				np   *networkingv1.NetworkPolicy
				port int32
			}{
				{serverNetworkPolicy(kc), serverMetricsPort},
				{sigServerNetworkPolicy(kc), sigMetricsPort},
				{natsNetworkPolicy(kc), natsExporterPort},
			} {
				from := metricsPeers(t, c.np, c.port)
				switch {
				case tc.want == "" && from != nil:
					t.Errorf("%s port %d admits %v, want anyone", c.np.Name, c.port, from)
				case tc.want != "" && (len(from) != 1 || from[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != tc.want || from[0].PodSelector != nil):
					t.Errorf("%s port %d admits %v, want namespace %s", c.np.Name, c.port, from, tc.want)
				}
			}
		})
	}
	// Without spec.monitoring: no exporter port, and the others to the default namespace.
	kc := newKezChat()
	for _, r := range natsNetworkPolicy(kc).Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port.IntVal == natsExporterPort {
				t.Error("the exporter port is open without an exporter")
			}
		}
	}
	if from := metricsPeers(t, serverNetworkPolicy(kc), serverMetricsPort); len(from) != 1 {
		t.Errorf("server metrics admit %v without spec.monitoring, want the monitoring namespace", from)
	}
}

// TestConfigPrometheusHoldsTheRulesAndTheDashboard: `kubectl apply -k
// config/prometheus` makes the PrometheusRule and the dashboard ConfigMap
// that Grafana's sidecar picks.
func TestConfigPrometheusHoldsTheRulesAndTheDashboard(t *testing.T) {
	found := map[string]bool{}
	for _, u := range kustomizeBuild(t, "prometheus") {
		found[u.GetKind()+"/"+u.GetName()] = true
		switch u.GetKind() {
		case "PrometheusRule":
			groups, _, _ := unstructured.NestedSlice(u.Object, "spec", "groups")
			if len(groups) == 0 {
				t.Errorf("PrometheusRule %s has no rule groups", u.GetName())
			}
		case "ConfigMap":
			if u.GetLabels()["grafana_dashboard"] != "1" {
				t.Errorf("dashboard ConfigMap labels %v", u.GetLabels())
			}
			if data, _, _ := unstructured.NestedString(u.Object, "data", "kez-chat.json"); !strings.Contains(data, `"panels"`) {
				t.Error("the dashboard ConfigMap holds no dashboard")
			}
		}
	}
	if !found["PrometheusRule/kez-chat"] || !found["ConfigMap/kez-chat-dashboard"] {
		t.Errorf("config/prometheus makes %v", found)
	}
}
