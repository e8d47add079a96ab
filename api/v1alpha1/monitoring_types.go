package v1alpha1

// MonitoringSpec is how Prometheus scrapes a KezChat. Setting it (even
// empty) runs `kezchat nats-exporter` beside each NATS server, which
// serves NATS's state as Prometheus metrics on its "metrics" port.
type MonitoringSpec struct {
	// PodMonitor makes a Prometheus Operator PodMonitor each for the chat
	// server, the sig-server and the NATS exporter, when the cluster has
	// the monitoring.coreos.com CRDs (otherwise the Monitoring condition
	// says PrometheusOperatorMissing).
	// +optional
	PodMonitor PodMonitorSpec `json:"podMonitor,omitempty"`
	// ScraperNamespace is the namespace whose pods may reach the metrics
	// ports (the NetworkPolicies admit no one else); "*" admits every pod.
	// Defaults to "monitoring".
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	// +optional
	ScraperNamespace string `json:"scraperNamespace,omitempty"`
}

// PodMonitorSpec asks for PodMonitors.
type PodMonitorSpec struct {
	// Enabled makes the PodMonitors.
	// +optional
	Enabled bool `json:"enabled,omitempty"`
	// Labels go on each PodMonitor, for a Prometheus whose
	// podMonitorSelector picks them (e.g. release: kube-prometheus-stack).
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// Interval between scrapes, e.g. 30s; Prometheus' own when empty.
	// +kubebuilder:validation:Pattern=`^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`
	// +optional
	Interval string `json:"interval,omitempty"`
}

// DefaultScraperNamespace is where Prometheus runs unless
// spec.monitoring.scraperNamespace says otherwise.
const DefaultScraperNamespace = "monitoring"

// ScraperNamespaceOrDefault is the namespace admitted to the metrics
// ports; m may be nil.
func (m *MonitoringSpec) ScraperNamespaceOrDefault() string {
	if m == nil || m.ScraperNamespace == "" {
		return DefaultScraperNamespace
	}
	return m.ScraperNamespace
}

// PodMonitorsEnabled reports whether spec.monitoring asks for
// PodMonitors; m may be nil.
func (m *MonitoringSpec) PodMonitorsEnabled() bool {
	return m != nil && m.PodMonitor.Enabled
}
