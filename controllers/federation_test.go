package controllers

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// federationEnvOf is the chat server container's KEZ_FEDERATION* variables,
// as name=value.
func federationEnvOf(kc *chatv1.KezChat) map[string]string {
	out := map[string]string{}
	for _, e := range serverDeployment(kc, testInputs).Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(e.Name, "KEZ_FEDERATION") {
			out[e.Name] = e.Value
		}
	}
	return out
}

func TestServerFederatesWhenTheSpecAsksOnEitherStore(t *testing.T) {
	jetstream := func(kc *chatv1.KezChat) { kc.Spec.Server.Store = chatv1.StoreJetStream }
	tests := []struct {
		name string
		spec func(*chatv1.KezChat)
		want map[string]string
	}{
		{"on by default, with every domain", func(*chatv1.KezChat) {}, map[string]string{"KEZ_FEDERATION": "true"}},
		{"on when enabled", func(kc *chatv1.KezChat) { kc.Spec.Federation.Enabled = ptr.To(true) }, map[string]string{"KEZ_FEDERATION": "true"}},
		{"the lists sorted and comma-joined", func(kc *chatv1.KezChat) {
			kc.Spec.Federation.AllowDomains = []string{"two.example", "one.example", "three.example"}
			kc.Spec.Federation.BlockDomains = []string{"spam.example", "abuse.example"}
		}, map[string]string{
			"KEZ_FEDERATION":       "true",
			"KEZ_FEDERATION_ALLOW": "one.example,three.example,two.example",
			"KEZ_FEDERATION_BLOCK": "abuse.example,spam.example",
		}},
		{"only the block list", func(kc *chatv1.KezChat) { kc.Spec.Federation.BlockDomains = []string{"spam.example"} },
			map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_BLOCK": "spam.example"}},
		{"nothing when disabled, lists and all", func(kc *chatv1.KezChat) {
			kc.Spec.Federation = chatv1.FederationSpec{Enabled: ptr.To(false), AllowDomains: []string{"one.example"}, BlockDomains: []string{"spam.example"}}
		}, map[string]string{}},
		{"on jetstream, with its lists", func(kc *chatv1.KezChat) {
			jetstream(kc)
			kc.Spec.Federation.AllowDomains = []string{"two.example", "one.example"}
			kc.Spec.Federation.BlockDomains = []string{"spam.example"}
		}, map[string]string{
			"KEZ_FEDERATION":       "true",
			"KEZ_FEDERATION_ALLOW": "one.example,two.example",
			"KEZ_FEDERATION_BLOCK": "spam.example",
		}},
		{"on jetstream chosen by replicas", func(kc *chatv1.KezChat) { kc.Spec.Server.Replicas = ptr.To[int32](3) },
			map[string]string{"KEZ_FEDERATION": "true"}},
		{"nothing on jetstream when disabled", func(kc *chatv1.KezChat) {
			jetstream(kc)
			kc.Spec.Federation = chatv1.FederationSpec{Enabled: ptr.To(false), BlockDomains: []string{"spam.example"}}
		}, map[string]string{}},
		{"the user's env wins, as for every variable", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Env = []corev1.EnvVar{{Name: "KEZ_FEDERATION_ALLOW", Value: "mine.example"}}
		}, map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_ALLOW": "mine.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := federationEnvOf(newKezChat(tt.spec))
			if len(got) != len(tt.want) {
				t.Errorf("env %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("env %v, want %v", got, tt.want)
					break
				}
			}
		})
	}
}

func TestServerPodTemplateDoesNotChangeWithTheListsOrder(t *testing.T) {
	a := serverDeployment(newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Federation.AllowDomains = []string{"b.example", "a.example"}
	}), testInputs)
	b := serverDeployment(newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Federation.AllowDomains = []string{"a.example", "b.example"}
	}), testInputs)
	if !equality.Semantic.DeepEqual(a.Spec.Template, b.Spec.Template) {
		t.Error("the same domains in another order change the pod template, and would roll the server")
	}
}

func TestFederationConditionFollowsTheSpec(t *testing.T) {
	tests := []struct {
		name    string
		spec    func(*chatv1.KezChat)
		status  metav1.ConditionStatus
		reason  string
		message []string
	}{
		{"default: every domain", func(*chatv1.KezChat) {}, metav1.ConditionTrue, ReasonFederationEnabled,
			[]string{"every other server", "no allowDomains, no blockDomains"}},
		{"allowed and blocked domains counted", func(kc *chatv1.KezChat) {
			kc.Spec.Federation.AllowDomains = []string{"one.example", "two.example"}
			kc.Spec.Federation.BlockDomains = []string{"spam.example"}
		}, metav1.ConditionTrue, ReasonFederationEnabled, []string{"the 2 domains of allowDomains only", "the 1 domain of blockDomains"}},
		{"blocked domains counted", func(kc *chatv1.KezChat) {
			kc.Spec.Federation.BlockDomains = []string{"spam.example", "abuse.example", "junk.example"}
		}, metav1.ConditionTrue, ReasonFederationEnabled, []string{"every other server but the 3 domains of blockDomains"}},
		{"disabled", func(kc *chatv1.KezChat) { kc.Spec.Federation.Enabled = ptr.To(false) }, metav1.ConditionFalse, ReasonFederationDisabled,
			[]string{"spec.federation.enabled is false"}},
		{"disabled on jetstream is disabled", func(kc *chatv1.KezChat) {
			kc.Spec.Federation.Enabled = ptr.To(false)
			kc.Spec.Server.Store = chatv1.StoreJetStream
		}, metav1.ConditionFalse, ReasonFederationDisabled, nil},
		{"jetstream, as sqlite", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store = chatv1.StoreJetStream
			kc.Spec.Federation.BlockDomains = []string{"spam.example"}
		}, metav1.ConditionTrue, ReasonFederationEnabled, []string{"every other server but the 1 domain of blockDomains"}},
		{"jetstream chosen by replicas", func(kc *chatv1.KezChat) { kc.Spec.Server.Replicas = ptr.To[int32](3) },
			metav1.ConditionTrue, ReasonFederationEnabled, []string{"every other server", "no allowDomains, no blockDomains"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(tt.spec)
			f := federationOf(kc)
			st := computeStatus(kc, observed{federation: &f})
			c := meta.FindStatusCondition(st.Conditions, chatv1.ConditionFederation)
			if c == nil {
				t.Fatalf("no Federation condition in %+v", st.Conditions)
			}
			if c.Status != tt.status || c.Reason != tt.reason || c.ObservedGeneration != kc.Generation {
				t.Errorf("Federation %s %s (generation %d), want %s %s", c.Status, c.Reason, c.ObservedGeneration, tt.status, tt.reason)
			}
			for _, m := range tt.message {
				if !strings.Contains(c.Message, m) {
					t.Errorf("message %q lacks %q", c.Message, m)
				}
			}
			// It says what the server runs with: on exactly when the
			// server gets KEZ_FEDERATION.
			if on := federationEnvOf(kc)["KEZ_FEDERATION"] == "true"; on != (c.Status == metav1.ConditionTrue) {
				t.Errorf("Federation %s, but KEZ_FEDERATION set: %v", c.Status, on)
			}
		})
	}
}

func TestFederationConditionStandsWhenTheReconcileStoppedBeforeTheServer(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Federation.Enabled = ptr.To(false) })
	kc.Status.Conditions = []metav1.Condition{{Type: chatv1.ConditionFederation, Status: metav1.ConditionTrue, Reason: ReasonFederationEnabled,
		Message: "as applied before", ObservedGeneration: 1, LastTransitionTime: metav1.Now()}}
	st := computeStatus(kc, observed{})
	if c := meta.FindStatusCondition(st.Conditions, chatv1.ConditionFederation); c == nil || c.Status != metav1.ConditionTrue || c.Message != "as applied before" {
		t.Errorf("a reconcile that applied nothing changed Federation to %+v", c)
	}
}
