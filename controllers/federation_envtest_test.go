package controllers

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestInvalidFederationsAreRefusedAtAdmission(t *testing.T) {
	ns := testNamespace(t)
	many := make([]string, 1001)
	for i := range many {
		many[i] = fmt.Sprintf("d%d.example", i)
	}
	tests := []struct {
		name string
		spec chatv1.FederationSpec
		want string
	}{
		{"a domain both allowed and blocked", chatv1.FederationSpec{
			AllowDomains: []string{"one.example", "two.example"}, BlockDomains: []string{"three.example", "two.example"},
		}, "a domain cannot be in both federation.allowDomains and federation.blockDomains"},
		{"its own domain allowed", chatv1.FederationSpec{AllowDomains: []string{"one.example", "chat.example.org"}},
			"spec.domain is this server's own"},
		{"its own domain blocked", chatv1.FederationSpec{BlockDomains: []string{"chat.example.org"}},
			"spec.domain is this server's own"},
		{"an allowed domain not a DNS name", chatv1.FederationSpec{AllowDomains: []string{"One.Example"}},
			"spec.federation.allowDomains[0]"},
		{"a blocked domain with a port", chatv1.FederationSpec{BlockDomains: []string{"spam.example:8443"}},
			"spec.federation.blockDomains[0]"},
		{"a wildcard", chatv1.FederationSpec{BlockDomains: []string{"*.spam.example"}},
			"spec.federation.blockDomains[0]"},
		{"an empty domain", chatv1.FederationSpec{AllowDomains: []string{""}},
			"spec.federation.allowDomains[0]"},
		{"a domain twice", chatv1.FederationSpec{BlockDomains: []string{"spam.example", "spam.example"}},
			"spec.federation.blockDomains[1]"},
		{"too many domains", chatv1.FederationSpec{AllowDomains: many}, "spec.federation.allowDomains"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := &chatv1.KezChat{
				ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns},
				Spec:       chatv1.KezChatSpec{Domain: "chat.example.org", Federation: tt.spec},
			}
			if err := k8s.Create(ctx, kc); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want Invalid naming %q", err, tt.want)
			}
		})
	}

	// Unset, federation is on; the lists take the most domains allowed.
	kc := &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns},
		Spec: chatv1.KezChatSpec{Domain: "chat.example.org", Federation: chatv1.FederationSpec{
			AllowDomains: many[:1000], BlockDomains: []string{"spam.example"},
		}},
	}
	if err := k8s.Create(ctx, kc); err != nil {
		t.Fatalf("1000 allowed domains and one blocked: %v", err)
	}
	if !ptr.Deref(kc.Spec.Federation.Enabled, false) {
		t.Errorf("spec.federation.enabled defaults to %v, want true", kc.Spec.Federation.Enabled)
	}
	// A domain may move from one list to the other in one change.
	kc.Spec.Federation.AllowDomains = append(kc.Spec.Federation.AllowDomains[:999], "spam.example")
	kc.Spec.Federation.BlockDomains = []string{many[999]}
	if err := k8s.Update(ctx, kc); err != nil {
		t.Errorf("moving a domain between the lists: %v", err)
	}
	// Off, with lists kept for later.
	kc.Spec.Federation.Enabled = ptr.To(false)
	if err := k8s.Update(ctx, kc); err != nil {
		t.Errorf("turning federation off: %v", err)
	}
}

// federationEnvIn is the KEZ_FEDERATION* variables of the chat server
// container d runs.
func federationEnvIn(d *appsv1.Deployment) map[string]string {
	out := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(e.Name, "KEZ_FEDERATION") {
			out[e.Name] = e.Value
		}
	}
	return out
}

func TestFederationFollowsTheSpecIntoTheServerAndTheStatus(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Federation.AllowDomains = []string{"two.example", "one.example"}
		kc.Spec.Federation.BlockDomains = []string{"spam.example"}
	})

	// On: the server gets the lists, the condition counts them, and the
	// server's pods may reach other servers on 443.
	want := map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_ALLOW": "one.example,two.example", "KEZ_FEDERATION_BLOCK": "spam.example"}
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if got := federationEnvIn(d); !maps.Equal(got, want) {
			return fmt.Errorf("env %v, want %v", got, want)
		}
		return nil
	})
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionFederation: "True"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionFederation); c.Reason != ReasonFederationEnabled ||
		!strings.Contains(c.Message, "2 domains of allowDomains") || !strings.Contains(c.Message, "1 domain of blockDomains") {
		t.Errorf("Federation %+v", c)
	}
	np := waitFor[networkingv1.NetworkPolicy](t, ns, "chat-server", nil)
	if !egressAllows(np, nil, corev1.ProtocolTCP, 443) || !egressAllows(np, nil, corev1.ProtocolUDP, 53) ||
		!egressAllows(np, selectorLabels(kc, componentNATS), corev1.ProtocolTCP, natsClientPort) ||
		!egressAllows(np, selectorLabels(kc, componentSigServer), corev1.ProtocolTCP, sigServerPort) {
		t.Errorf("the API server holds egress %q", egressGrants(np))
	}

	// Off: nothing of it in the server, and the condition says why. With
	// push off too, 443 closes.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Federation.Enabled = ptr.To(false)
		kc.Spec.Push.Enabled = ptr.To(false)
	})
	wantFederationOff(t, ns)

	// On jetstream, the same: the server gets the lists, the condition
	// counts them, and 443 opens for federation alone (push off here).
	js := testNamespace(t)
	startManager(t, js)
	createKezChat(t, js, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Store = chatv1.StoreJetStream
		kc.Spec.Push.Enabled = ptr.To(false)
		kc.Spec.Federation.BlockDomains = []string{"spam.example", "abuse.example"}
	})
	want = map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_BLOCK": "abuse.example,spam.example"}
	waitFor[appsv1.Deployment](t, js, "chat-server", func(d *appsv1.Deployment) error {
		if store, _ := envValue(d.Spec.Template.Spec.Containers[0], "KEZ_STORE"); store != string(chatv1.StoreJetStream) {
			return fmt.Errorf("KEZ_STORE=%s, want jetstream", store)
		}
		if got := federationEnvIn(d); !maps.Equal(got, want) {
			return fmt.Errorf("env %v, want %v", got, want)
		}
		return nil
	})
	kc = waitForConditions(t, js, map[string]metav1.ConditionStatus{chatv1.ConditionFederation: "True"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionFederation); c.Reason != ReasonFederationEnabled ||
		!strings.Contains(c.Message, "every other server but the 2 domains of blockDomains") {
		t.Errorf("Federation %+v", c)
	}
	waitFor[networkingv1.NetworkPolicy](t, js, "chat-server", func(np *networkingv1.NetworkPolicy) error {
		if !egressAllows(np, nil, corev1.ProtocolTCP, 443) {
			return fmt.Errorf("443 closed with federation on: %q", egressGrants(np))
		}
		return nil
	})

	// And off on jetstream: nothing of it, and 443 closes.
	updateKezChat(t, js, func(kc *chatv1.KezChat) { kc.Spec.Federation.Enabled = ptr.To(false) })
	wantFederationOff(t, js)
}

// wantFederationOff waits for ns's KezChat to be without federation (push
// off too): no KEZ_FEDERATION* env, Federation False for Disabled, and 443
// closed in the chat server's egress.
func wantFederationOff(t *testing.T, ns string) {
	t.Helper()
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if got := federationEnvIn(d); len(got) > 0 {
			return fmt.Errorf("env %v, want none", got)
		}
		return nil
	})
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionFederation: "False"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionFederation); c.Reason != ReasonFederationDisabled {
		t.Errorf("Federation %+v", c)
	}
	waitFor[networkingv1.NetworkPolicy](t, ns, "chat-server", func(np *networkingv1.NetworkPolicy) error {
		if egressAllows(np, nil, corev1.ProtocolTCP, 443) {
			return fmt.Errorf("443 still open: %q", egressGrants(np))
		}
		return nil
	})
}
