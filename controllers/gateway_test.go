package controllers

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// withGateway gives kc a spec.gateway attached to the Gateway public in
// the namespace gateways.
func withGateway(kc *chatv1.KezChat) {
	kc.Spec.Gateway = &chatv1.GatewaySpec{ParentRefs: []gatewayv1.ParentReference{
		{Name: "public", Namespace: ptr.To[gatewayv1.Namespace]("gateways")},
	}}
}

// routeTable lists a route's rules as "path -> service:port timeout",
// sorted; timeout is "default" when the rule sets none.
func routeTable(route *gatewayv1.HTTPRoute) []string {
	var out []string
	for _, rule := range route.Spec.Rules {
		timeout := "default"
		if rule.Timeouts != nil && rule.Timeouts.Request != nil {
			timeout = string(*rule.Timeouts.Request)
		}
		for _, m := range rule.Matches {
			for _, b := range rule.BackendRefs {
				out = append(out, fmt.Sprintf("%s %s -> %s:%d %s", *m.Path.Type, *m.Path.Value, b.Name, ptr.Deref(b.Port, 0), timeout))
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestHTTPRouteRoutesTheChatHostWithoutCuttingStreams(t *testing.T) {
	server := []string{
		fmt.Sprintf("PathPrefix / -> chat-server:%d default", serverPort),
		fmt.Sprintf("PathPrefix /v1/blobs -> chat-server:%d 0s", serverPort),
		fmt.Sprintf("PathPrefix /v1/inbox -> chat-server:%d 0s", serverPort),
		fmt.Sprintf("PathPrefix /v1/link -> chat-server:%d 0s", serverPort),
	}
	keys := fmt.Sprintf("PathPrefix /v1/keys -> chat-sig-server:%d default", sigServerPort)
	websocket := fmt.Sprintf("PathPrefix /nats -> chat-nats:%d 0s", natsWebSocketPort)
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	tests := []struct {
		name      string
		spec      func(*chatv1.KezChat)
		hostnames []gatewayv1.Hostname
		rules     []string
	}{
		{"defaults: the domain, the server and the key directory", func(*chatv1.KezChat) {},
			[]gatewayv1.Hostname{"chat.example.org"}, sorted(append(slices.Clone(server), keys)...)},
		{"the ingress host when one is set", func(kc *chatv1.KezChat) { kc.Spec.Ingress.Host = "talk.example.org" },
			[]gatewayv1.Hostname{"talk.example.org"}, sorted(append(slices.Clone(server), keys)...)},
		{"the hostnames given", func(kc *chatv1.KezChat) {
			kc.Spec.Gateway.Hostnames = []gatewayv1.Hostname{"chat.example.org", "*.chat.example.org"}
		}, []gatewayv1.Hostname{"chat.example.org", "*.chat.example.org"}, sorted(append(slices.Clone(server), keys)...)},
		{"no /v1/keys without a sig-server", func(kc *chatv1.KezChat) { kc.Spec.SigServer.Enabled = ptr.To(false) },
			[]gatewayv1.Hostname{"chat.example.org"}, server},
		{"/nats to NATS's WebSocket when on", func(kc *chatv1.KezChat) { kc.Spec.NATS.WebSocket = true },
			[]gatewayv1.Hostname{"chat.example.org"}, sorted(append(slices.Clone(server), keys, websocket)...)},
		{"no /nats when NATS is off", func(kc *chatv1.KezChat) {
			kc.Spec.NATS.WebSocket, kc.Spec.NATS.Enabled = true, ptr.To(false)
		}, []gatewayv1.Hostname{"chat.example.org"}, sorted(append(slices.Clone(server), keys)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(withGateway, tt.spec)
			route := httpRoute(kc)
			if route.Name != "chat" || route.Namespace != "team" || route.Labels[managedByLabel] != managedByValue {
				t.Errorf("route %s/%s labels %v", route.Namespace, route.Name, route.Labels)
			}
			if !slices.Equal(route.Spec.Hostnames, tt.hostnames) {
				t.Errorf("hostnames %q, want %q", route.Spec.Hostnames, tt.hostnames)
			}
			if len(route.Spec.ParentRefs) != 1 || route.Spec.ParentRefs[0].Name != "public" || ptr.Deref(route.Spec.ParentRefs[0].Namespace, "") != "gateways" {
				t.Errorf("parentRefs %+v", route.Spec.ParentRefs)
			}
			if got := routeTable(route); !slices.Equal(got, tt.rules) {
				t.Errorf("rules:\n got %q\nwant %q", got, tt.rules)
			}
			// Rule names are unique, as the CRD requires.
			var names []string
			for _, r := range route.Spec.Rules {
				names = append(names, string(ptr.Deref(r.Name, "")))
			}
			slices.Sort(names)
			if len(slices.Compact(names)) != len(route.Spec.Rules) {
				t.Errorf("rule names %q repeat", names)
			}
		})
	}
	// The route's own annotations; the Ingress's are not its.
	kc := newKezChat(withGateway, func(kc *chatv1.KezChat) {
		kc.Spec.Ingress.Annotations = map[string]string{"nginx.ingress.kubernetes.io/proxy-buffering": "off"}
		kc.Spec.Gateway.Annotations = map[string]string{"example.org/route": "yes"}
	})
	if got := httpRoute(kc).Annotations; len(got) != 1 || got["example.org/route"] != "yes" {
		t.Errorf("annotations %v", got)
	}
}

func TestGatewayIsOnWhenEnabledOrWhenItNamesAParent(t *testing.T) {
	refs := []gatewayv1.ParentReference{{Name: "public"}}
	tests := []struct {
		name string
		spec *chatv1.GatewaySpec
		want bool
	}{
		{"no spec.gateway", nil, false},
		{"an empty spec.gateway", &chatv1.GatewaySpec{}, false},
		{"parentRefs", &chatv1.GatewaySpec{ParentRefs: refs}, true},
		{"parentRefs but disabled", &chatv1.GatewaySpec{ParentRefs: refs, Enabled: ptr.To(false)}, false},
		{"enabled with parentRefs", &chatv1.GatewaySpec{ParentRefs: refs, Enabled: ptr.To(true)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.spec.IsEnabled(); got != tt.want {
				t.Errorf("IsEnabled %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHTTPRouteIsDesiredOnlyWhereTheClusterServesThem(t *testing.T) {
	const route = "*v1.HTTPRoute/chat"
	tests := []struct {
		name              string
		spec              func(*chatv1.KezChat)
		served            bool
		desired, unwanted bool
	}{
		{"spec.gateway, served", withGateway, true, true, false},
		{"spec.gateway, not served: nothing to make or delete", withGateway, false, false, false},
		{"no spec.gateway, served: deleted if made", func(*chatv1.KezChat) {}, true, false, true},
		{"no spec.gateway, not served", func(*chatv1.KezChat) {}, false, false, false},
		{"disabled, served", func(kc *chatv1.KezChat) { withGateway(kc); kc.Spec.Gateway.Enabled = ptr.To(false) }, true, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(tt.spec)
			in := testInputs
			in.GatewayAPI = tt.served
			if got := slices.Contains(kindNames(desiredObjects(kc, in)), route); got != tt.desired {
				t.Errorf("HTTPRoute desired: %v, want %v", got, tt.desired)
			}
			if got := slices.Contains(kindNames(unwantedObjects(kc, in)), route); got != tt.unwanted {
				t.Errorf("HTTPRoute unwanted: %v, want %v", got, tt.unwanted)
			}
			// The Ingress stays as ingress.enabled says.
			if !slices.Contains(kindNames(desiredObjects(kc, in)), "*v1.Ingress/chat") {
				t.Error("the Ingress went with spec.gateway")
			}
		})
	}
}

func TestNetworkPoliciesAdmitTheGatewayDataPlane(t *testing.T) {
	noIngress := func(kc *chatv1.KezChat) { kc.Spec.Ingress.Enabled = ptr.To(false) }
	gatewayOnly := func(kc *chatv1.KezChat) { withGateway(kc); noIngress(kc) }
	tests := []struct {
		name  string
		np    func(*chatv1.KezChat) *networkingv1.NetworkPolicy
		spec  func(*chatv1.KezChat)
		open  []int32
		peers []string
	}{
		{"server: HTTP from the Gateway's namespace without an Ingress", serverNetworkPolicy, gatewayOnly,
			nil, []string{"ns:gateways", "ns:monitoring"}},
		{"server: HTTP from the ingress controller and the Gateway", serverNetworkPolicy, withGateway,
			nil, []string{"ns:gateways", "ns:ingress-nginx", "ns:monitoring"}},
		{"server: a Gateway named without a namespace is in the KezChat's", serverNetworkPolicy, func(kc *chatv1.KezChat) {
			gatewayOnly(kc)
			kc.Spec.Gateway.ParentRefs = append(kc.Spec.Gateway.ParentRefs, gatewayv1.ParentReference{Name: "local"},
				gatewayv1.ParentReference{Name: "other", Namespace: ptr.To[gatewayv1.Namespace]("gateways")})
		}, nil, []string{"ns:gateways", "ns:monitoring", "ns:team"}},
		{"server: the data plane's namespace and pods when given", serverNetworkPolicy, func(kc *chatv1.KezChat) {
			gatewayOnly(kc)
			kc.Spec.Gateway.ControllerNamespace = "envoy-gateway-system"
			kc.Spec.Gateway.ControllerPodLabels = map[string]string{"app.kubernetes.io/name": "envoy"}
		}, nil, []string{"ns:envoy-gateway-system/envoy", "ns:monitoring"}},
		{"server: HTTP from anywhere with the Gateway's namespace *", serverNetworkPolicy, func(kc *chatv1.KezChat) {
			withGateway(kc)
			kc.Spec.Gateway.ControllerNamespace = "*"
		}, []int32{serverPort}, []string{"ns:monitoring"}},
		{"server: HTTP from anywhere with the Ingress's namespace *", serverNetworkPolicy, func(kc *chatv1.KezChat) {
			withGateway(kc)
			kc.Spec.Ingress.ControllerNamespace = "*"
		}, []int32{serverPort}, []string{"ns:monitoring"}},
		{"server: a disabled gateway admits nothing more", serverNetworkPolicy, func(kc *chatv1.KezChat) {
			withGateway(kc)
			kc.Spec.Gateway.Enabled = ptr.To(false)
		}, nil, []string{"ns:ingress-nginx", "ns:monitoring"}},
		{"sig-server: API from the server and the Gateway when the route has /v1/keys", sigServerNetworkPolicy, gatewayOnly,
			nil, []string{"ns:gateways", "ns:monitoring", componentServer}},
		{"NATS: WebSocket from the Gateway when on", natsNetworkPolicy, func(kc *chatv1.KezChat) {
			gatewayOnly(kc)
			kc.Spec.NATS.WebSocket = true
		}, nil, []string{componentNATS, "ns:gateways", componentServer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			open, peers := openPorts(tt.np(newKezChat(tt.spec)))
			want := slices.Clone(tt.open)
			slices.Sort(want)
			if !slices.Equal(open, want) || !slices.Equal(peers, tt.peers) {
				t.Errorf("open ports %v, peers %v; want %v, %v", open, peers, want, tt.peers)
			}
		})
	}
}

func TestRouteReadyFollowsTheParentsConditions(t *testing.T) {
	public := gatewayv1.ParentReference{Name: "public", Namespace: ptr.To[gatewayv1.Namespace]("gateways")}
	internal := gatewayv1.ParentReference{Name: "internal", SectionName: ptr.To[gatewayv1.SectionName]("https")}
	// As the route's status holds them: with the CRD's defaults.
	defaulted := func(ref gatewayv1.ParentReference) gatewayv1.ParentReference {
		ref.Group, ref.Kind = ptr.To[gatewayv1.Group](gatewayv1.GroupName), ptr.To[gatewayv1.Kind]("Gateway")
		return ref
	}
	cond := func(typ gatewayv1.RouteConditionType, status metav1.ConditionStatus, gen int64, reason string) metav1.Condition {
		return metav1.Condition{Type: string(typ), Status: status, ObservedGeneration: gen, Reason: reason, Message: "said " + reason}
	}
	parent := func(ref gatewayv1.ParentReference, conds ...metav1.Condition) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: defaulted(ref), ControllerName: "example.org/gateway", Conditions: conds}
	}
	accepted := cond(gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, 2, "Accepted")
	resolved := cond(gatewayv1.RouteConditionResolvedRefs, metav1.ConditionTrue, 2, "ResolvedRefs")
	tests := []struct {
		name    string
		parents []gatewayv1.RouteParentStatus
		ready   bool
		reason  string
		message string
	}{
		{"no parent has spoken", nil, false, ReasonRoutePending, "Gateway gateways/public, Gateway team/internal listener https"},
		{"every parent accepted", []gatewayv1.RouteParentStatus{parent(public, accepted, resolved), parent(internal, accepted)}, true, ReasonRouteAccepted, ""},
		{"one parent has not spoken", []gatewayv1.RouteParentStatus{parent(public, accepted, resolved)}, false, ReasonRoutePending, "team/internal"},
		{"a parent refused", []gatewayv1.RouteParentStatus{parent(public, accepted),
			parent(internal, cond(gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, 2, "NotAllowedByListeners"))},
			false, ReasonRouteNotAccepted, "NotAllowedByListeners"},
		{"accepted for an older generation", []gatewayv1.RouteParentStatus{parent(public, accepted),
			parent(internal, cond(gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, 1, "Accepted"))},
			false, ReasonRoutePending, "team/internal"},
		{"a backend not found", []gatewayv1.RouteParentStatus{parent(internal, accepted),
			parent(public, accepted, cond(gatewayv1.RouteConditionResolvedRefs, metav1.ConditionFalse, 2, "BackendNotFound"))},
			false, ReasonRouteRefsUnresolved, "BackendNotFound"},
		{"another listener's status is not this one's", []gatewayv1.RouteParentStatus{parent(public, accepted),
			parent(gatewayv1.ParentReference{Name: "internal", SectionName: ptr.To[gatewayv1.SectionName]("http")}, accepted)},
			false, ReasonRoutePending, "team/internal listener https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Generation: 2}}
			route.Status.Parents = tt.parents
			got := judgeRoute(route, []gatewayv1.ParentReference{public, internal})
			if got.accepted != tt.ready || got.reason != tt.reason || !strings.Contains(got.message, tt.message) {
				t.Errorf("got %+v, want ready %v reason %s message with %q", got, tt.ready, tt.reason, tt.message)
			}
		})
	}
}

func TestRouteReadyIsAbsentWithoutARoute(t *testing.T) {
	kc := newKezChat(withGateway)
	st := computeStatus(kc, observed{route: &routeState{reason: ReasonGatewayAPIMissing, message: "no CRD"}})
	kc.Status = st
	if c := findCondition(st, chatv1.ConditionRouteReady); c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonGatewayAPIMissing {
		t.Fatalf("RouteReady %+v, want False GatewayAPIMissing", c)
	}
	kc.Spec.Gateway = nil
	if c := findCondition(computeStatus(kc, observed{}), chatv1.ConditionRouteReady); c != nil {
		t.Errorf("RouteReady %+v without spec.gateway, want none", c)
	}
}

func findCondition(st chatv1.KezChatStatus, typ string) *metav1.Condition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

// The apply compares an HTTPRoute by the Gateway API's schemas, which
// client-go's converter does not hold.
func TestTypeConverterKnowsHTTPRoutes(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := gatewayv1.Install(scheme); err != nil {
		t.Fatal(err)
	}
	r := &KezChatReconciler{Scheme: scheme}
	kc := newKezChat(withGateway, func(kc *chatv1.KezChat) { kc.Spec.NATS.WebSocket = true })
	for _, obj := range []client.Object{httpRoute(kc), ingress(kc)} {
		gvk, err := apiutil.GVKForObject(obj, scheme)
		if err != nil {
			t.Fatal(err)
		}
		content, err := r.applyConfiguration(obj, gvk)
		if err != nil {
			t.Fatal(err)
		}
		typed, err := r.typeConverter().ObjectToTyped(&unstructured.Unstructured{Object: content})
		if err != nil {
			t.Fatalf("%s: %v", gvk.Kind, err)
		}
		fields, err := typed.ToFieldSet()
		if err != nil {
			t.Fatal(err)
		}
		if fields.Empty() {
			t.Errorf("%s: no fields", gvk.Kind)
		}
	}
}
