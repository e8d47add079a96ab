package controllers

import (
	"context"
	"fmt"
	"maps"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// natsExporterPort is where `kezchat nats-exporter`, beside each NATS
// server, serves NATS's state as Prometheus metrics.
const natsExporterPort = 7777

// The Monitoring condition, present while spec.monitoring.podMonitor asks
// for PodMonitors, and its reasons.
const (
	ConditionMonitoring = "Monitoring"
	// ReasonPrometheusOperatorMissing: spec.monitoring.podMonitor asks for
	// PodMonitors and the cluster has no monitoring.coreos.com CRDs.
	ReasonPrometheusOperatorMissing = "PrometheusOperatorMissing"
	ReasonPodMonitorsApplied        = "PodMonitorsApplied"
)

// natsExporterContainer reads the NATS server's monitoring port over the
// pod's loopback and serves it on its "metrics" port; it runs the kez-chat
// image, confined as every other container.
func natsExporterContainer(kc *chatv1.KezChat, in Inputs) corev1.Container {
	return corev1.Container{
		Name:            "nats-exporter",
		Image:           in.image(kc),
		ImagePullPolicy: kc.Spec.ImagePullPolicy,
		Args: []string{"nats-exporter",
			fmt.Sprintf("--nats-monitor-url=http://127.0.0.1:%d", natsMonitorPort),
			fmt.Sprintf("--metrics-bind=:%d", natsExporterPort),
		},
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: natsExporterPort, Protocol: corev1.ProtocolTCP}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("5m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		ReadinessProbe:  httpProbe("/metrics", "metrics", 30, 3),
		SecurityContext: containerSecurityContext(),
	}
}

// fromScrapers is who may reach the metrics ports: the pods of
// spec.monitoring.scraperNamespace; nil, anyone, for "*".
func fromScrapers(kc *chatv1.KezChat) []networkingv1.NetworkPolicyPeer {
	ns := kc.Spec.Monitoring.ScraperNamespaceOrDefault()
	if ns == "*" {
		return nil
	}
	return []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
		MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns},
	}}}
}

// podMonitor scrapes the "metrics" port of one component's pods, labelling
// every series with the KezChat's name (kezchat) and the component, which
// the alert rules and the dashboard (monitoring/) group by; Prometheus
// adds namespace and pod.
func podMonitor(kc *chatv1.KezChat, name, component string) *monitoringv1.PodMonitor {
	spec := &kc.Spec.Monitoring.PodMonitor
	// The user's labels (a Prometheus's podMonitorSelector), under the
	// operator's own: the cache and the owner lookups go by those.
	l := maps.Clone(spec.Labels)
	if l == nil {
		l = map[string]string{}
	}
	maps.Copy(l, labels(kc, component))
	endpoint := monitoringv1.PodMetricsEndpoint{
		Port: ptr.To("metrics"),
		Path: "/metrics",
		RelabelConfigs: []monitoringv1.RelabelConfig{
			{SourceLabels: []monitoringv1.LabelName{"__meta_kubernetes_pod_label_app_kubernetes_io_instance"}, TargetLabel: "kezchat", Action: "replace"},
			{SourceLabels: []monitoringv1.LabelName{"__meta_kubernetes_pod_label_app_kubernetes_io_component"}, TargetLabel: "component", Action: "replace"},
		},
	}
	if spec.Interval != "" {
		endpoint.Interval = monitoringv1.Duration(spec.Interval)
	}
	return &monitoringv1.PodMonitor{
		TypeMeta:   metav1.TypeMeta{APIVersion: monitoringv1.SchemeGroupVersion.String(), Kind: monitoringv1.PodMonitorsKind},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kc.Namespace, Labels: l},
		Spec: monitoringv1.PodMonitorSpec{
			Selector:            metav1.LabelSelector{MatchLabels: selectorLabels(kc, component)},
			PodMetricsEndpoints: []monitoringv1.PodMetricsEndpoint{endpoint},
		},
	}
}

// podMonitors are the PodMonitors kc's spec asks for: one per component
// that runs and serves metrics.
func podMonitors(kc *chatv1.KezChat) []client.Object {
	if !kc.Spec.Monitoring.PodMonitorsEnabled() {
		return nil
	}
	n := namesOf(kc)
	objs := []client.Object{podMonitor(kc, n.server(), componentServer)}
	if kc.Spec.NATS.IsEnabled() {
		objs = append(objs, podMonitor(kc, n.nats(), componentNATS))
	}
	if kc.Spec.SigServer.IsEnabled() {
		objs = append(objs, podMonitor(kc, n.sigServer(), componentSigServer))
	}
	return objs
}

// unwantedPodMonitors are the PodMonitors kc no longer asks for.
func unwantedPodMonitors(kc *chatv1.KezChat) []client.Object {
	n := namesOf(kc)
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: kc.Namespace} }
	want := map[string]bool{}
	for _, o := range podMonitors(kc) {
		want[o.GetName()] = true
	}
	var objs []client.Object
	for _, name := range []string{n.server(), n.nats(), n.sigServer()} {
		if !want[name] {
			objs = append(objs, &monitoringv1.PodMonitor{ObjectMeta: meta(name)})
		}
	}
	return objs
}

// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=podmonitors,verbs=get;list;watch;create;patch;delete

// podMonitorOutcome is what a reconcile did about PodMonitors, for the
// Monitoring condition.
type podMonitorOutcome int

const (
	podMonitorsNotReached podMonitorOutcome = iota // the reconcile stopped before: the condition stands
	podMonitorsOff                                 // not asked for: no condition
	podMonitorsApplied
	podMonitorsNoCRD
)

// applyPodMonitors makes the PodMonitors kc asks for and deletes those it
// no longer does, when the cluster has the Prometheus Operator's CRDs;
// without them, a PodMonitor asked for is a Warning event and the
// Monitoring condition False.
func (r *KezChatReconciler) applyPodMonitors(ctx context.Context, kc *chatv1.KezChat) (podMonitorOutcome, error) {
	if !r.PrometheusOperator {
		if !kc.Spec.Monitoring.PodMonitorsEnabled() {
			return podMonitorsOff, nil
		}
		if !meta.IsStatusConditionFalse(kc.Status.Conditions, ConditionMonitoring) {
			r.Recorder.Eventf(kc, nil, corev1.EventTypeWarning, ReasonPrometheusOperatorMissing, "Apply",
				"spec.monitoring.podMonitor.enabled, but the cluster has no monitoring.coreos.com PodMonitor CRD (install the Prometheus Operator, then restart the operator)")
		}
		return podMonitorsNoCRD, nil
	}
	for _, obj := range podMonitors(kc) {
		if err := controllerutil.SetControllerReference(kc, obj, r.Scheme); err != nil {
			return podMonitorsNotReached, err
		}
		if _, err := r.apply(ctx, kc, obj); err != nil {
			return podMonitorsNotReached, err
		}
	}
	for _, obj := range unwantedPodMonitors(kc) {
		if err := r.deleteIfOwned(ctx, kc, obj); err != nil {
			return podMonitorsNotReached, err
		}
	}
	if !kc.Spec.Monitoring.PodMonitorsEnabled() {
		return podMonitorsOff, nil
	}
	return podMonitorsApplied, nil
}

// setMonitoringCondition records o in st: Monitoring True when the
// PodMonitors are applied, False (PrometheusOperatorMissing) when the
// cluster cannot hold them, absent when none are asked for.
func setMonitoringCondition(st *chatv1.KezChatStatus, gen int64, o podMonitorOutcome) {
	switch o {
	case podMonitorsOff:
		meta.RemoveStatusCondition(&st.Conditions, ConditionMonitoring)
	case podMonitorsApplied:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionMonitoring, Status: metav1.ConditionTrue,
			Reason: ReasonPodMonitorsApplied, Message: "a PodMonitor scrapes each component that runs", ObservedGeneration: gen})
	case podMonitorsNoCRD:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionMonitoring, Status: metav1.ConditionFalse,
			Reason: ReasonPrometheusOperatorMissing, Message: "spec.monitoring.podMonitor asks for PodMonitors and the cluster has no monitoring.coreos.com CRDs", ObservedGeneration: gen})
	}
}

// HasPodMonitorCRD reports whether the API server serves
// monitoring.coreos.com/v1 PodMonitors; the operator asks once, at start.
func HasPodMonitorCRD(mapper meta.RESTMapper) (bool, error) {
	return served(mapper, podMonitorKind)
}
