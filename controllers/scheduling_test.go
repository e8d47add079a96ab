package controllers

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func testScheduling(zone string) chatv1.Scheduling {
	return chatv1.Scheduling{
		NodeSelector: map[string]string{"pool": zone},
		Tolerations:  []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: zone, Effect: corev1.TaintEffectNoSchedule}},
		Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
				{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}}}}}}},
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 2, TopologyKey: "rack", WhenUnsatisfiable: corev1.ScheduleAnyway}},
		PriorityClassName:         "chat-" + zone,
	}
}

func schedulingOf(p corev1.PodSpec) chatv1.Scheduling {
	return chatv1.Scheduling{NodeSelector: p.NodeSelector, Tolerations: p.Tolerations, Affinity: p.Affinity,
		TopologySpreadConstraints: p.TopologySpreadConstraints, PriorityClassName: p.PriorityClassName}
}

func TestEveryComponentTakesItsOwnScheduling(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Server.Scheduling = testScheduling("a")
		kc.Spec.NATS.Scheduling = testScheduling("b")
		kc.Spec.NATS.Replicas = ptr.To[int32](3)
		kc.Spec.SigServer.Scheduling = testScheduling("c")
	})
	for name, got := range map[string]corev1.PodSpec{
		"a": serverDeployment(kc, testInputs).Spec.Template.Spec,
		"b": natsStatefulSet(kc, testInputs).Spec.Template.Spec,
		"c": sigServerDeployment(kc, testInputs).Spec.Template.Spec,
	} {
		if want := testScheduling(name); !equality.Semantic.DeepEqual(schedulingOf(got), want) {
			t.Errorf("pods of %s: scheduling %+v, want %+v", name, schedulingOf(got), want)
		}
	}
}

func TestNATSClusterSpreadsOverNodesByDefault(t *testing.T) {
	spread := func(replicas int32) []corev1.TopologySpreadConstraint {
		kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.NATS.Replicas = ptr.To(replicas) })
		return natsStatefulSet(kc, testInputs).Spec.Template.Spec.TopologySpreadConstraints
	}
	if got := spread(1); len(got) != 0 {
		t.Errorf("one NATS replica spreads: %+v", got)
	}
	got := spread(3)
	if len(got) != 2 {
		t.Fatalf("three NATS replicas: spread %+v, want by node and by zone", got)
	}
	byNode, byZone := got[0], got[1]
	if byNode.TopologyKey != corev1.LabelHostname || byNode.WhenUnsatisfiable != corev1.DoNotSchedule || byNode.MaxSkew != 1 ||
		ptr.Deref(byNode.NodeTaintsPolicy, "") != corev1.NodeInclusionPolicyHonor {
		t.Errorf("by node: %+v, want at most one more pod on any node than another, counting only nodes the pods tolerate", byNode)
	}
	if byZone.TopologyKey != corev1.LabelTopologyZone || byZone.WhenUnsatisfiable != corev1.ScheduleAnyway {
		t.Errorf("by zone: %+v, want a preference", byZone)
	}
	for _, c := range got {
		if !equality.Semantic.DeepEqual(c.LabelSelector.MatchLabels, selectorLabels(newKezChat(), componentNATS)) {
			t.Errorf("spread counts pods %v, not this KezChat's NATS pods", c.LabelSelector.MatchLabels)
		}
	}
}

// The scheduling fields survive the API server's pruning: the CRD's schema
// holds them for each component.
func TestSchedulingFieldsReachThePods(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Scheduling = testScheduling("a")
		kc.Spec.NATS.Scheduling = testScheduling("b")
		kc.Spec.SigServer.Scheduling = testScheduling("c")
	})
	for name, zone := range map[string]string{"chat-server": "a", "chat-sig-server": "c"} {
		d := waitFor[appsv1.Deployment](t, ns, name, nil)
		if got := schedulingOf(d.Spec.Template.Spec); !equality.Semantic.DeepEqual(got, testScheduling(zone)) {
			t.Errorf("%s scheduling %+v", name, got)
		}
	}
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	if got := schedulingOf(sts.Spec.Template.Spec); !equality.Semantic.DeepEqual(got, testScheduling("b")) {
		t.Errorf("NATS scheduling %+v", got)
	}
}

// NATS's probes are the upstream chart's: a large JetStream recovers for
// up to 15 minutes before the kubelet restarts it.
func TestNATSProbesMatchTheUpstreamChart(t *testing.T) {
	c := natsStatefulSet(newKezChat(), testInputs).Spec.Template.Spec.Containers[0]
	for _, tt := range []struct {
		name                   string
		probe                  *corev1.Probe
		path                   string
		period, timeout, fails int32
	}{
		{"startup", c.StartupProbe, "/healthz", 10, 5, 90},
		{"readiness", c.ReadinessProbe, "/healthz?js-server-only=true", 10, 5, 3},
		{"liveness", c.LivenessProbe, "/healthz?js-enabled-only=true", 30, 5, 3},
	} {
		p := tt.probe
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != tt.path || p.HTTPGet.Port.String() != "monitor" ||
			p.PeriodSeconds != tt.period || p.TimeoutSeconds != tt.timeout || p.FailureThreshold != tt.fails || p.InitialDelaySeconds != 10 {
			t.Errorf("%s probe %+v, want %s every %ds, %ds timeout, %d failures, 10s initial delay", tt.name, p, tt.path, tt.period, tt.timeout, tt.fails)
		}
	}
	if budget := c.StartupProbe.InitialDelaySeconds + c.StartupProbe.PeriodSeconds*c.StartupProbe.FailureThreshold; budget < 15*60 {
		t.Errorf("JetStream gets %ds to recover before a restart, want 15 minutes", budget)
	}
}

func TestImagePullPoliciesApplyToTheirOwnImages(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.ImagePullPolicy = corev1.PullAlways })
	if got := natsStatefulSet(kc, testInputs).Spec.Template.Spec.Containers[0].ImagePullPolicy; got != "" {
		t.Errorf("spec.imagePullPolicy reaches the NATS container: %q", got)
	}
	for name, d := range map[string]*appsv1.Deployment{"server": serverDeployment(kc, testInputs), "sig-server": sigServerDeployment(kc, testInputs)} {
		if got := d.Spec.Template.Spec.Containers[0].ImagePullPolicy; got != corev1.PullAlways {
			t.Errorf("%s pull policy %q, want spec.imagePullPolicy's Always", name, got)
		}
	}
	kc.Spec.NATS.ImagePullPolicy = corev1.PullNever
	if got := natsStatefulSet(kc, testInputs).Spec.Template.Spec.Containers[0].ImagePullPolicy; got != corev1.PullNever {
		t.Errorf("nats.imagePullPolicy Never gives %q", got)
	}
}
