package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"kez.lat/chat/controllers/testenv"
)

const gatewaySample = "../config/samples/chat_v1alpha1_kezchat_gateway.yaml"

// A cluster with the Gateway API's CRDs: the gateway sample gets its
// HTTPRoute, turns Ready whatever the Gateway says, reports the Gateway's
// acceptance, and loses the route when spec.gateway goes.
func TestKezChatThroughAGateway(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()

	// The CRDs first: the operator looks for HTTPRoutes when it starts.
	// Server-side, as the HTTPRoute CRD is too big for the annotation
	// client-side apply keeps.
	crds, err := testenv.GatewayAPICRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(crds, "../config/crd/bases") {
		c.run(t, "kubectl", "apply", "--server-side", "-f", f)
	}
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat", "httproutes.gateway.networking.k8s.io")
	c.runOperator(t, kezchatBinary(t))

	const ns, name = "routed", "routed"
	c.run(t, "kubectl", "create", "namespace", ns)
	c.run(t, "kubectl", "apply", "--namespace", ns, "-f", gatewaySample)
	c.waitReady(t, ns, name)

	var route gatewayv1.HTTPRoute
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &route); err != nil {
		t.Fatalf("the KezChat's HTTPRoute: %v", err)
	}
	if p := route.Spec.ParentRefs; len(p) != 1 || p[0].Name != "public" || ptr.Deref(p[0].Namespace, "") != "gateways" ||
		ptr.Deref(p[0].SectionName, "") != "https" {
		t.Errorf("parentRefs %+v", p)
	}
	if !slices.Equal(route.Spec.Hostnames, []gatewayv1.Hostname{"routed.example.org"}) {
		t.Errorf("hostnames %q", route.Spec.Hostnames)
	}
	// Each path to its backend; the stream and the WebSocket without a
	// request timeout.
	backends := map[string]string{}
	for _, rule := range route.Spec.Rules {
		timeout := "default"
		if rule.Timeouts != nil && rule.Timeouts.Request != nil {
			timeout = string(*rule.Timeouts.Request)
		}
		for _, m := range rule.Matches {
			backends[*m.Path.Value] = fmt.Sprintf("%s:%d %s", rule.BackendRefs[0].Name, ptr.Deref(rule.BackendRefs[0].Port, 0), timeout)
		}
	}
	for path, want := range map[string]string{
		"/": "routed-server:6969 default", "/v1/inbox": "routed-server:6969 0s",
		"/v1/keys": "routed-sig-server:7878 default", "/nats": "routed-nats:8080 0s",
	} {
		if backends[path] != want {
			t.Errorf("%s goes to %q, want %q (all: %v)", path, backends[path], want, backends)
		}
	}

	// Play the Gateway's controller, which accepts the route.
	route.Status.Parents = []gatewayv1.RouteParentStatus{{
		ParentRef: route.Spec.ParentRefs[0], ControllerName: "example.org/gateway-controller",
		Conditions: []metav1.Condition{{
			Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionTrue, Reason: "Accepted",
			ObservedGeneration: route.Generation, LastTransitionTime: metav1.Now(),
		}},
	}}
	if err := c.client.Status().Update(ctx, &route); err != nil {
		t.Fatal(err)
	}
	c.run(t, "kubectl", "wait", "--namespace", ns, "--for=condition=RouteReady", "kezchat/"+name, kubectlLimit)

	// Without spec.gateway the route goes.
	c.run(t, "kubectl", "patch", "--namespace", ns, "kezchat/"+name, "--type=json", "-p", `[{"op":"remove","path":"/spec/gateway"}]`)
	eventually(t, stepTimeout, "the HTTPRoute deleted", func() error {
		err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &route)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	c.waitReady(t, ns, name)
}
