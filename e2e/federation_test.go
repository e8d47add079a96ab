package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Three KezChats in one namespace, applied as a user would: one that
// federates only with the second, the second (on the jetstream store,
// with push off, so 443 is federation's alone) with every domain but a
// blocked one, and a third with federation and push off. Each gets the
// Federation condition its spec says, its server the KEZ_FEDERATION
// settings, and its server's NetworkPolicy the egress it needs: DNS, its
// own NATS and sig-server, and 443 only where push or federation is on.
func TestKezChatsFederateAsTheirSpecsSay(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()

	c.run(t, "kubectl", "apply", "--server-side", "-f", "../config/crd/bases")
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat")
	c.runOperator(t, kezchatBinary(t))

	const ns = "federated"
	c.run(t, "kubectl", "create", "namespace", ns)
	c.apply(t, ns, `apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: one
spec:
  domain: one.example.org
  federation:
    allowDomains: [two.example.org]
---
apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: two
spec:
  domain: two.example.org
  server:
    store: jetstream
  push:
    enabled: false
  federation:
    blockDomains: [spam.example, abuse.example]
---
apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: three
spec:
  domain: three.example.org
  push:
    enabled: false
  federation:
    enabled: false
`)

	for _, tt := range []struct {
		name   string
		store  string
		status string
		reason string
		env    map[string]string
		https  bool
	}{
		{"one", "sqlite", "True", "Enabled", map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_ALLOW": "two.example.org"}, true},
		{"two", "jetstream", "True", "Enabled", map[string]string{"KEZ_FEDERATION": "true", "KEZ_FEDERATION_BLOCK": "abuse.example,spam.example"}, true},
		{"three", "sqlite", "False", "Disabled", map[string]string{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kc := c.waitReady(t, ns, tt.name)
			if cond := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionFederation); cond == nil ||
				string(cond.Status) != tt.status || cond.Reason != tt.reason || cond.ObservedGeneration != kc.Generation {
				t.Errorf("Federation %+v, want %s %s", cond, tt.status, tt.reason)
			}

			var d appsv1.Deployment
			if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: tt.name + "-server"}, &d); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{}
			store := ""
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				if strings.HasPrefix(e.Name, "KEZ_FEDERATION") {
					env[e.Name] = e.Value
				}
				if e.Name == "KEZ_STORE" {
					store = e.Value
				}
			}
			if store != tt.store {
				t.Errorf("the server's KEZ_STORE %q, want %q", store, tt.store)
			}
			if fmt.Sprint(env) != fmt.Sprint(tt.env) {
				t.Errorf("the server's env %v, want %v", env, tt.env)
			}

			var np networkingv1.NetworkPolicy
			if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: tt.name + "-server"}, &np); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
				t.Fatalf("policy types %v: egress unrestricted", np.Spec.PolicyTypes)
			}
			want := []string{"TCP/53 *", "UDP/53 *", "TCP/4222 " + tt.name + "/nats", "TCP/7878 " + tt.name + "/sig-server"}
			if tt.https {
				want = append(want, "TCP/443 *")
			}
			slices.Sort(want)
			if got := egressOf(&np); !slices.Equal(got, want) {
				t.Errorf("egress\n got %q\nwant %q", got, want)
			}
		})
	}
}

// egressOf lists a NetworkPolicy's egress as "<protocol>/<port> <to>",
// <to> "*" for any address or "<instance>/<component>" for pods of a
// KezChat; anything else is spelled out, to fail the comparison.
func egressOf(np *networkingv1.NetworkPolicy) []string {
	var out []string
	for _, rule := range np.Spec.Egress {
		to := []string{"*"}
		if len(rule.To) > 0 {
			to = nil
			for _, peer := range rule.To {
				if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
					to = append(to, fmt.Sprintf("%+v", peer))
					continue
				}
				l := peer.PodSelector.MatchLabels
				to = append(to, l["app.kubernetes.io/instance"]+"/"+l["app.kubernetes.io/component"])
			}
		}
		for _, p := range rule.Ports {
			for _, dest := range to {
				out = append(out, fmt.Sprintf("%s/%s %s", ptr.Deref(p.Protocol, corev1.ProtocolTCP), p.Port, dest))
			}
		}
		if len(rule.Ports) == 0 {
			out = append(out, "any "+strings.Join(to, ","))
		}
	}
	slices.Sort(out)
	return out
}
