package v1alpha1

import (
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GatewaySpec is a Gateway API HTTPRoute for the chat host, beside or
// instead of the Ingress.
//
// +kubebuilder:validation:XValidation:rule="!has(self.enabled) || !self.enabled || (has(self.parentRefs) && size(self.parentRefs) > 0)",message="gateway.enabled needs parentRefs: the HTTPRoute attaches to the Gateways they name"
type GatewaySpec struct {
	// Enabled creates the HTTPRoute; unset means on when parentRefs names
	// a Gateway. The cluster must serve the Gateway API's HTTPRoute
	// (gateway.networking.k8s.io/v1): without it the condition RouteReady
	// says so and the rest of the KezChat is made all the same.
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// ParentRefs are the Gateways (or, by sectionName, their listeners)
	// the HTTPRoute attaches to. A Gateway in another namespace must
	// admit routes from this one (its listeners' allowedRoutes).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	ParentRefs []gatewayv1.ParentReference `json:"parentRefs,omitempty"`

	// Hostnames the HTTPRoute answers for; empty means ingress.host, or
	// the domain: the host of status.url.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Hostnames []gatewayv1.Hostname `json:"hostnames,omitempty"`

	// Annotations of the HTTPRoute.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`

	// ControllerNamespace is where the Gateway's data plane (its proxy
	// pods) runs: with the HTTPRoute on, the chat server's and the
	// sig-server's HTTP ports, and NATS's WebSocket, admit connections
	// from there as they do from the ingress controller. Empty means the
	// namespaces of the Gateways in parentRefs, where Istio, NGINX
	// Gateway Fabric, Contour and kgateway run a Gateway's proxies
	// (Envoy Gateway runs them in envoy-gateway-system). "*" admits every
	// namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	ControllerNamespace string `json:"controllerNamespace,omitempty"`

	// ControllerPodLabels, when set, narrows the admitted pods of those
	// namespaces to the data plane's own.
	// +optional
	ControllerPodLabels map[string]string `json:"controllerPodLabels,omitempty"`
}

// IsEnabled reports whether the HTTPRoute is made: never without
// spec.gateway; as enabled says; and when that is unset, whenever
// parentRefs names a Gateway.
func (s *GatewaySpec) IsEnabled() bool {
	return s != nil && boolOrDefault(s.Enabled, len(s.ParentRefs) > 0)
}

// ConditionRouteReady is, while spec.gateway asks for an HTTPRoute,
// whether every Gateway it names has accepted it; absent otherwise.
const ConditionRouteReady = "RouteReady"
