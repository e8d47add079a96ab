package controllers

import (
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
