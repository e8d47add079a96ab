package controllers

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Reasons of the Federation condition.
const (
	ReasonFederationEnabled  = "Enabled"
	ReasonFederationDisabled = "Disabled"
)

// federates reports whether kc's chat server federates: whenever
// spec.federation asks for it, on either store (on jetstream, one replica
// at a time, the holder of the store's writer lease, delivers the
// messages queued for other servers).
func federates(kc *chatv1.KezChat) bool {
	return kc.Spec.Federation.IsEnabled()
}

// federationEnv turns the server's federation on, with its allow and block
// lists when they are set (sorted, so that the pod template does not
// change with the lists' order). Nothing when it does not federate: the
// server's default is off. By environment, as the rest of the wiring, so
// that a server version without these flags still starts.
func federationEnv(kc *chatv1.KezChat) []corev1.EnvVar {
	if !federates(kc) {
		return nil
	}
	env := []corev1.EnvVar{{Name: "KEZ_FEDERATION", Value: "true"}}
	for _, l := range []struct {
		name    string
		domains []string
	}{
		{"KEZ_FEDERATION_ALLOW", kc.Spec.Federation.AllowDomains},
		{"KEZ_FEDERATION_BLOCK", kc.Spec.Federation.BlockDomains},
	} {
		if len(l.domains) > 0 {
			d := slices.Clone(l.domains)
			slices.Sort(d)
			env = append(env, corev1.EnvVar{Name: l.name, Value: strings.Join(slices.Compact(d), ",")})
		}
	}
	return env
}

// federationState is the Federation condition a KezChat's spec gives.
type federationState struct {
	on              bool
	reason, message string
}

// federationOf is what kc's spec makes of federation.
func federationOf(kc *chatv1.KezChat) federationState {
	f := &kc.Spec.Federation
	if !federates(kc) {
		return federationState{reason: ReasonFederationDisabled,
			message: "spec.federation.enabled is false: the chat server neither accepts messages from other servers nor relays any to them"}
	}
	var msg string
	switch allow, block := len(f.AllowDomains), len(f.BlockDomains); {
	case allow > 0 && block > 0:
		msg = fmt.Sprintf("the chat server federates with the %s of allowDomains only, and never with the %s of blockDomains", domains(allow), domains(block))
	case allow > 0:
		msg = fmt.Sprintf("the chat server federates with the %s of allowDomains only", domains(allow))
	case block > 0:
		msg = fmt.Sprintf("the chat server federates with every other server but the %s of blockDomains", domains(block))
	default:
		msg = "the chat server federates with every other server (no allowDomains, no blockDomains)"
	}
	return federationState{on: true, reason: ReasonFederationEnabled, message: msg}
}

func domains(n int) string {
	if n == 1 {
		return "1 domain"
	}
	return fmt.Sprintf("%d domains", n)
}

// setFederationCondition records f in st; a nil f (a reconcile that
// stopped before it applied the chat server) leaves the condition as it
// was.
func setFederationCondition(st *chatv1.KezChatStatus, gen int64, f *federationState) {
	if f == nil {
		return
	}
	status := metav1.ConditionFalse
	if f.on {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: chatv1.ConditionFederation, Status: status, Reason: f.reason, Message: f.message, ObservedGeneration: gen,
	})
}
