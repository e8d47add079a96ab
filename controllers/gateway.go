package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Reasons of the RouteReady condition.
const (
	// ReasonGatewayAPIMissing: spec.gateway asks for an HTTPRoute, but the
	// cluster serves none.
	ReasonGatewayAPIMissing = "GatewayAPIMissing"
	ReasonRouteAccepted     = "Accepted"
	ReasonRoutePending      = "Pending"
	ReasonRouteNotAccepted  = "NotAccepted"
	// ReasonRouteRefsUnresolved: a Gateway accepted the route but cannot
	// reach one of its backends.
	ReasonRouteRefsUnresolved = "RefsNotResolved"
)

// noRequestTimeout is the Gateway API duration that turns a route's
// request timeout off: the HTTPRouteTimeouts doc says the zero duration
// SHOULD disable it, and an implementation that cannot MUST take it as
// the longest it can set.
const noRequestTimeout gatewayv1.Duration = "0s"

// longLivedPaths are the chat server's paths whose responses outlast a
// gateway's default request timeout (Envoy's is 15 s for the whole
// response): the SSE inbox stream (/v1/inbox/{handle}/stream), link reads
// that wait up to 25 s, and attachment downloads of up to 25 MiB on slow
// links. The server bounds them itself (its stream keep-alives and
// per-write deadlines).
var longLivedPaths = []string{"/v1/inbox", "/v1/link", "/v1/blobs"}

// httpRoute routes the chat host as ingress() does: / to the chat server,
// /v1/keys to the sig-server when there is one, /nats to NATS's WebSocket
// listener when it is on. Prefix matching picks the longest path across
// rules, so /v1/keys wins over /. The rules that carry streams, the
// WebSocket and long waits have no request timeout; the others keep the
// gateway's default.
func httpRoute(kc *chatv1.KezChat) *gatewayv1.HTTPRoute {
	spec := kc.Spec.Gateway
	n := namesOf(kc)
	hostnames := slices.Clone(spec.Hostnames)
	if len(hostnames) == 0 {
		hostnames = []gatewayv1.Hostname{gatewayv1.Hostname(kc.Spec.Ingress.HostOr(kc.Spec.Domain))}
	}
	rule := func(name, service string, port int32, timeout *gatewayv1.Duration, paths ...string) gatewayv1.HTTPRouteRule {
		r := gatewayv1.HTTPRouteRule{
			Name: ptr.To(gatewayv1.SectionName(name)),
			BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
				Name: gatewayv1.ObjectName(service), Port: ptr.To(port),
			}}}},
		}
		for _, p := range paths {
			r.Matches = append(r.Matches, gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{
				Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To(p),
			}})
		}
		if timeout != nil {
			r.Timeouts = &gatewayv1.HTTPRouteTimeouts{Request: timeout}
		}
		return r
	}
	var rules []gatewayv1.HTTPRouteRule
	if kc.Spec.SigServer.IsEnabled() {
		rules = append(rules, rule("sig-server", n.sigServer(), sigServerPort, nil, "/v1/keys"))
	}
	if kc.Spec.NATS.IsEnabled() && kc.Spec.NATS.WebSocket {
		// A browser's WebSocket lasts as long as it follows its inbox.
		rules = append(rules, rule("nats-websocket", n.nats(), natsWebSocketPort, ptr.To(noRequestTimeout), natsWebSocketPath))
	}
	rules = append(rules,
		rule("streams", n.server(), serverPort, ptr.To(noRequestTimeout), longLivedPaths...),
		rule("server", n.server(), serverPort, nil, "/"),
	)
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.httpRoute(), Namespace: kc.Namespace,
			Labels: labels(kc, componentServer), Annotations: spec.Annotations,
		},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: slices.Clone(spec.ParentRefs)},
			Hostnames:       hostnames,
			Rules:           rules,
		},
	}
}

// fromGateway is who may reach what the HTTPRoute routes to: the
// Gateways' data plane, by the namespace spec.gateway names or else the
// Gateways' own namespaces (and its pods, when their labels are given).
// anyone is true when the namespace is "*". Both are zero when there is
// no HTTPRoute.
func fromGateway(kc *chatv1.KezChat) (peers []networkingv1.NetworkPolicyPeer, anyone bool) {
	spec := kc.Spec.Gateway
	if !spec.IsEnabled() {
		return nil, false
	}
	if spec.ControllerNamespace == "*" {
		return nil, true
	}
	var namespaces []string
	if spec.ControllerNamespace != "" {
		namespaces = []string{spec.ControllerNamespace}
	} else {
		for _, ref := range spec.ParentRefs {
			namespaces = append(namespaces, string(ptr.Deref(ref.Namespace, gatewayv1.Namespace(kc.Namespace))))
		}
		slices.Sort(namespaces)
		namespaces = slices.Compact(namespaces)
	}
	for _, ns := range namespaces {
		peer := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{
			MatchLabels: map[string]string{corev1.LabelMetadataName: ns},
		}}
		if len(spec.ControllerPodLabels) > 0 {
			peer.PodSelector = &metav1.LabelSelector{MatchLabels: spec.ControllerPodLabels}
		}
		peers = append(peers, peer)
	}
	return peers, false
}

// httpRouteKind is what the cluster must serve for spec.gateway.
var httpRouteKind = gatewayv1.SchemeGroupVersion.WithKind("HTTPRoute")

// httpRoutesServed says whether the Gateway API's CRDs are installed. A
// watch of a kind the API server does not serve would fail the manager,
// so the operator watches HTTPRoutes only if they are, as seen when it
// starts.
func httpRoutesServed(mapper meta.RESTMapper) (bool, error) {
	return served(mapper, httpRouteKind)
}

// routeState is what the reconcile saw of the HTTPRoute spec.gateway asks
// for: the RouteReady condition it gives.
type routeState struct {
	accepted bool
	reason   string
	message  string
}

// observeRoute reads kc's HTTPRoute and judges it; nil when kc asks for
// none.
func (r *KezChatReconciler) observeRoute(ctx context.Context, kc *chatv1.KezChat) (*routeState, error) {
	if !kc.Spec.Gateway.IsEnabled() {
		return nil, nil
	}
	if !r.gatewayAPI {
		s := &routeState{reason: ReasonGatewayAPIMissing, message: fmt.Sprintf(
			"spec.gateway asks for an HTTPRoute, but the cluster serves no %s %s: install the Gateway API CRDs, then restart the operator (it looks for them when it starts)",
			httpRouteKind.GroupVersion(), httpRouteKind.Kind)}
		if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionRouteReady); c == nil || c.Reason != ReasonGatewayAPIMissing {
			r.Recorder.Eventf(kc, nil, corev1.EventTypeWarning, ReasonGatewayAPIMissing, "Reconcile", "%s", s.message)
		}
		return s, nil
	}
	var route gatewayv1.HTTPRoute
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: namesOf(kc).httpRoute()}, &route); {
	case apierrors.IsNotFound(err):
		return &routeState{reason: ReasonNotCreated, message: "the HTTPRoute does not exist yet"}, nil
	case err != nil:
		return nil, fmt.Errorf("reading HTTPRoute %s: %w", namesOf(kc).httpRoute(), err)
	}
	s := judgeRoute(&route, kc.Spec.Gateway.ParentRefs)
	return &s, nil
}

// judgeRoute is the RouteReady condition of route, attached to parents:
// accepted when each parent's controller says Accepted and ResolvedRefs
// for the route's current generation.
func judgeRoute(route *gatewayv1.HTTPRoute, parents []gatewayv1.ParentReference) routeState {
	var pending []string
	for _, want := range parents {
		name := parentName(want, route.Namespace)
		var st *gatewayv1.RouteParentStatus
		for i, got := range route.Status.Parents {
			if sameParent(got.ParentRef, want, route.Namespace) {
				st = &route.Status.Parents[i]
				break
			}
		}
		var accepted, resolved *metav1.Condition
		if st != nil {
			accepted = meta.FindStatusCondition(st.Conditions, string(gatewayv1.RouteConditionAccepted))
			resolved = meta.FindStatusCondition(st.Conditions, string(gatewayv1.RouteConditionResolvedRefs))
		}
		switch {
		case accepted == nil || accepted.ObservedGeneration < route.Generation:
			pending = append(pending, name)
		case accepted.Status != metav1.ConditionTrue:
			return routeState{reason: ReasonRouteNotAccepted, message: fmt.Sprintf("%s does not accept the HTTPRoute: %s: %s", name, accepted.Reason, accepted.Message)}
		case resolved != nil && resolved.ObservedGeneration >= route.Generation && resolved.Status == metav1.ConditionFalse:
			return routeState{reason: ReasonRouteRefsUnresolved, message: fmt.Sprintf("%s cannot reach the HTTPRoute's backends: %s: %s", name, resolved.Reason, resolved.Message)}
		}
	}
	if len(pending) > 0 {
		return routeState{reason: ReasonRoutePending, message: "waiting for " + strings.Join(pending, ", ") + " to accept the HTTPRoute"}
	}
	return routeState{accepted: true, reason: ReasonRouteAccepted, message: "every parent Gateway accepted the HTTPRoute"}
}

// parentName names a parent reference for a message: Gateway ns/name,
// and its listener.
func parentName(ref gatewayv1.ParentReference, routeNamespace string) string {
	s := fmt.Sprintf("%s %s/%s", ptr.Deref(ref.Kind, "Gateway"), ptr.Deref(ref.Namespace, gatewayv1.Namespace(routeNamespace)), ref.Name)
	if ref.SectionName != nil {
		s += " listener " + string(*ref.SectionName)
	}
	return s
}

// sameParent reports whether two parent references name the same parent,
// with the defaults the HTTPRoute CRD gives.
func sameParent(a, b gatewayv1.ParentReference, routeNamespace string) bool {
	ns := gatewayv1.Namespace(routeNamespace)
	return ptr.Deref(a.Group, gatewayv1.GroupName) == ptr.Deref(b.Group, gatewayv1.GroupName) &&
		ptr.Deref(a.Kind, "Gateway") == ptr.Deref(b.Kind, "Gateway") &&
		ptr.Deref(a.Namespace, ns) == ptr.Deref(b.Namespace, ns) &&
		a.Name == b.Name &&
		ptr.Deref(a.SectionName, "") == ptr.Deref(b.SectionName, "") &&
		ptr.Deref(a.Port, 0) == ptr.Deref(b.Port, 0)
}

// setRouteCondition sets RouteReady from route, or removes it when kc
// asks for no HTTPRoute (route nil).
func setRouteCondition(st *chatv1.KezChatStatus, route *routeState, gen int64) {
	if route == nil {
		meta.RemoveStatusCondition(&st.Conditions, chatv1.ConditionRouteReady)
		return
	}
	status := metav1.ConditionFalse
	if route.accepted {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: chatv1.ConditionRouteReady, Status: status, Reason: route.reason, Message: route.message, ObservedGeneration: gen,
	})
}
