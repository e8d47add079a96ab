package controllers

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers/testenv"
)

func TestKezChatWithGatewayGetsAnHTTPRouteUntilItIsRemoved(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	kc := createKezChat(t, ns, withGateway, func(kc *chatv1.KezChat) {
		kc.Spec.NATS.WebSocket = true
		kc.Spec.Gateway.Hostnames = []gatewayv1.Hostname{"chat.example.org", "www.chat.example.org"}
	})
	kc = getKezChat(t, ns)

	route := waitFor[gatewayv1.HTTPRoute](t, ns, "chat", nil)
	if err := controlledBy(route, kc); err != nil {
		t.Error(err)
	}
	if got := routeTable(route); !slices.Equal(got, routeTable(httpRoute(kc))) ||
		!slices.Contains(got, fmt.Sprintf("PathPrefix /v1/inbox -> chat-server:%d 0s", serverPort)) ||
		!slices.Contains(got, fmt.Sprintf("PathPrefix /nats -> chat-nats:%d 0s", natsWebSocketPort)) {
		t.Errorf("the API server holds rules %q", got)
	}
	if !slices.Equal(route.Spec.Hostnames, []gatewayv1.Hostname{"chat.example.org", "www.chat.example.org"}) {
		t.Errorf("hostnames %q", route.Spec.Hostnames)
	}
	if p := route.Spec.ParentRefs; len(p) != 1 || p[0].Name != "public" || ptr.Deref(p[0].Namespace, "") != "gateways" ||
		ptr.Deref(p[0].Kind, "") != "Gateway" {
		t.Errorf("parentRefs %+v", p)
	}

	// The Gateway's acceptance holds back neither Ready nor anything else.
	markAllReady(t, ns)
	want := maps.Clone(readyConditions)
	want[chatv1.ConditionRouteReady] = "False"
	kc = waitForConditions(t, ns, want)
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionRouteReady); c.Reason != ReasonRoutePending ||
		!strings.Contains(c.Message, "Gateway gateways/public") {
		t.Errorf("RouteReady before any Gateway spoke: %+v", c)
	}

	// Play the Gateway's controller: its acceptance wakes the KezChat.
	route = waitFor[gatewayv1.HTTPRoute](t, ns, "chat", nil)
	route.Status.Parents = []gatewayv1.RouteParentStatus{{
		ParentRef:      route.Spec.ParentRefs[0],
		ControllerName: "example.org/gateway-controller",
		Conditions: []metav1.Condition{{
			Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionTrue, Reason: "Accepted",
			ObservedGeneration: route.Generation, LastTransitionTime: metav1.Now(),
		}},
	}}
	if err := k8s.Status().Update(ctx, route); err != nil {
		t.Fatal(err)
	}
	want[chatv1.ConditionRouteReady] = "True"
	waitForConditions(t, ns, want)

	// A steady route costs no request: what the operator owns of it
	// compares equal to what it would apply.
	eventually(t, waitTimeout, "a reconcile that sends nothing", func() error {
		mark := mgr.requests.mark()
		mgr.reconcileNow(t, kc)
		if sent := mgr.requests.since(mark); len(sent) > 0 {
			return fmt.Errorf("a reconcile sent %q", sent)
		}
		return nil
	})

	// A deleted route is put back.
	if err := k8s.Delete(ctx, route); err != nil {
		t.Fatal(err)
	}
	waitFor[gatewayv1.HTTPRoute](t, ns, "chat", func(r *gatewayv1.HTTPRoute) error {
		if r.UID == route.UID {
			return fmt.Errorf("still the deleted route")
		}
		return nil
	})

	// Without spec.gateway, the route goes and so does its condition.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Gateway = nil })
	eventually(t, waitTimeout, "the HTTPRoute deleted", func() error {
		r, err := get[gatewayv1.HTTPRoute](ns, "chat")
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return err
		case r.DeletionTimestamp.IsZero():
			return fmt.Errorf("HTTPRoute still there")
		}
		return nil
	})
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionRouteReady: "absent"})
	if _, err := get[networkingv1.Ingress](ns, "chat"); err != nil {
		t.Errorf("the Ingress: %v", err)
	}
}

func TestInvalidGatewaysAreRefusedAtAdmission(t *testing.T) {
	ns := testNamespace(t)
	tests := []struct {
		name string
		spec chatv1.GatewaySpec
		want string
	}{
		{"enabled without parents", chatv1.GatewaySpec{Enabled: ptr.To(true)}, "gateway.enabled needs parentRefs"},
		{"a parent without a name", chatv1.GatewaySpec{ParentRefs: []gatewayv1.ParentReference{{}}}, "spec.gateway.parentRefs[0].name"},
		{"a hostname not a DNS name", chatv1.GatewaySpec{ParentRefs: []gatewayv1.ParentReference{{Name: "public"}},
			Hostnames: []gatewayv1.Hostname{"Chat_Example"}}, "spec.gateway.hostnames[0]"},
		{"a data plane namespace not a name", chatv1.GatewaySpec{ParentRefs: []gatewayv1.ParentReference{{Name: "public"}},
			ControllerNamespace: "Envoy Gateway"}, "spec.gateway.controllerNamespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := &chatv1.KezChat{
				ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns},
				Spec:       chatv1.KezChatSpec{Domain: "chat.example.org", Gateway: &tt.spec},
			}
			if err := k8s.Create(ctx, kc); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want Invalid naming %q", err, tt.want)
			}
		})
	}
	// Disabled needs no parents.
	kc := &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns},
		Spec:       chatv1.KezChatSpec{Domain: "chat.example.org", Gateway: &chatv1.GatewaySpec{Enabled: ptr.To(false)}},
	}
	if err := k8s.Create(ctx, kc); err != nil {
		t.Errorf("a disabled gateway: %v", err)
	}
}

// On a cluster without the Gateway API, spec.gateway is a condition and
// an event, and the rest of the KezChat is made all the same. It runs a
// control plane of its own, without the Gateway API's CRDs.
func TestKezChatWithGatewayOnAClusterWithoutGatewayAPIIsMadeAndSaysSo(t *testing.T) {
	env, cfg, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	c, err := client.New(cfg, client.Options{Scheme: testScheme})
	if err != nil {
		t.Fatal(err)
	}
	const ns = "team"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	startManagerOn(t, cfg, ns)
	kc := newKezChat(withGateway)
	kc.Namespace, kc.Generation = ns, 0
	if err := c.Create(ctx, kc); err != nil {
		t.Fatal(err)
	}

	eventually(t, waitTimeout, "RouteReady GatewayAPIMissing", func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(kc), kc); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionRouteReady)
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != ReasonGatewayAPIMissing {
			return fmt.Errorf("RouteReady %+v", cond)
		}
		if !strings.Contains(cond.Message, "install the Gateway API CRDs") {
			return fmt.Errorf("RouteReady says %q", cond.Message)
		}
		return nil
	})
	// The rest is made: the workloads, the Ingress, and the policies,
	// which admit the Gateway's namespace for when the API comes.
	for _, obj := range []client.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "chat-server"}},
		&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: "chat"}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "chat-server"}},
	} {
		eventually(t, waitTimeout, fmt.Sprintf("%T %s", obj, obj.GetName()), func() error {
			return c.Get(ctx, types.NamespacedName{Namespace: ns, Name: obj.GetName()}, obj)
		})
		if np, ok := obj.(*networkingv1.NetworkPolicy); ok {
			if _, peers := openPorts(np); !slices.Equal(peers, []string{"ns:gateways", "ns:ingress-nginx", "ns:monitoring"}) {
				t.Errorf("the server's policy admits %q", peers)
			}
		}
	}
	eventually(t, waitTimeout, "a GatewayAPIMissing event", func() error {
		var events eventsv1.EventList
		if err := c.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == ReasonGatewayAPIMissing && e.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("none among %d events", len(events.Items))
	})
}
