package controllers

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// serviceAccount is the identity of kc's pods. They call no Kubernetes API,
// so it has no roles and its token is not mounted.
func serviceAccount(kc *chatv1.KezChat) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		ObjectMeta:                   metav1.ObjectMeta{Name: namesOf(kc).serviceAccount(), Namespace: kc.Namespace, Labels: instanceLabels(kc)},
		AutomountServiceAccountToken: ptr.To(false),
	}
}

// ingress routes the chat host's /, /v1 and /.well-known to the chat
// server, and /v1/keys to the sig-server when there is one, so that
// clients reach the key directory at the chat's own origin. Prefix
// matching picks the longest path, so /v1/keys wins over /v1.
func ingress(kc *chatv1.KezChat) *networkingv1.Ingress {
	spec := &kc.Spec.Ingress
	host := spec.HostOr(kc.Spec.Domain)
	backend := func(service string) networkingv1.IngressBackend {
		return networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
			Name: service, Port: networkingv1.ServiceBackendPort{Name: "http"},
		}}
	}
	var paths []networkingv1.HTTPIngressPath
	if kc.Spec.SigServer.IsEnabled() {
		paths = append(paths, networkingv1.HTTPIngressPath{
			Path: "/v1/keys", PathType: ptr.To(networkingv1.PathTypePrefix), Backend: backend(namesOf(kc).sigServer()),
		})
	}
	if kc.Spec.NATS.IsEnabled() && kc.Spec.NATS.WebSocket {
		// Browsers that follow their inbox over NATS reach its WebSocket
		// listener at wss://<host>/nats; the auth callout admits each to
		// its own inbox only.
		paths = append(paths, networkingv1.HTTPIngressPath{
			Path: natsWebSocketPath, PathType: ptr.To(networkingv1.PathTypePrefix),
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
				Name: namesOf(kc).nats(), Port: networkingv1.ServiceBackendPort{Name: "websocket"},
			}},
		})
	}
	for _, p := range []string{"/.well-known", "/v1", "/"} {
		paths = append(paths, networkingv1.HTTPIngressPath{
			Path: p, PathType: ptr.To(networkingv1.PathTypePrefix), Backend: backend(namesOf(kc).server()),
		})
	}
	ing := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{
			Name: namesOf(kc).ingress(), Namespace: kc.Namespace,
			Labels: labels(kc, componentServer), Annotations: spec.Annotations,
		},
		Spec: networkingv1.IngressSpec{
			IngressClassName: spec.ClassName,
			Rules: []networkingv1.IngressRule{{
				Host:             host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: paths}},
			}},
		},
	}
	if spec.TLSSecretName != "" {
		ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{host}, SecretName: spec.TLSSecretName}}
	}
	return ing
}

func tcpPort(port int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(port))}
}

func fromPods(kc *chatv1.KezChat, component string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: selectorLabels(kc, component)}}
}

// fromIngress is who may reach what the Ingress routes to: the ingress
// controller's namespace (and its pods, when their labels are given); nil,
// anyone, when the Ingress is off (the admin exposes the Service another
// way) or its namespace is "*".
func fromIngress(kc *chatv1.KezChat) []networkingv1.NetworkPolicyPeer {
	spec := &kc.Spec.Ingress
	ns := spec.ControllerNamespaceOrDefault()
	if !spec.IsEnabled() || ns == "*" {
		return nil
	}
	peer := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{
		MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns},
	}}
	if len(spec.ControllerPodLabels) > 0 {
		peer.PodSelector = &metav1.LabelSelector{MatchLabels: spec.ControllerPodLabels}
	}
	return []networkingv1.NetworkPolicyPeer{peer}
}

// fromEdge is who may reach what the Ingress and the HTTPRoute route to:
// the ingress controller and the Gateways' data plane, whichever are on;
// nil, anyone, when either admits every namespace, or when neither is on
// (the admin exposes the Service another way).
func fromEdge(kc *chatv1.KezChat) []networkingv1.NetworkPolicyPeer {
	gateway, anyone := fromGateway(kc)
	if !kc.Spec.Gateway.IsEnabled() {
		return fromIngress(kc)
	}
	if anyone {
		return nil
	}
	if !kc.Spec.Ingress.IsEnabled() {
		return gateway
	}
	ingress := fromIngress(kc)
	if ingress == nil {
		return nil // "*"
	}
	return append(ingress, gateway...)
}

// serverNetworkPolicy admits the chat server's HTTP port from the ingress
// controller and the Gateways' data plane only, so that no other tenant
// of the cluster reaches it (or forges X-Forwarded-For), and its metrics
// port to the scrapers' namespace (spec.monitoring.scraperNamespace).
func serverNetworkPolicy(kc *chatv1.KezChat) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: namesOf(kc).server(), Namespace: kc.Namespace, Labels: labels(kc, componentServer)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selectorLabels(kc, componentServer)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: fromEdge(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(serverPort)}},
				{From: fromScrapers(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(serverMetricsPort)}},
			},
		},
	}
}

// natsClients are the pods that connect to NATS's clients port: the chat
// server, and on JetStream the backup Jobs, which read the streams with
// the chat server's credentials.
func natsClients(kc *chatv1.KezChat) []networkingv1.NetworkPolicyPeer {
	peers := []networkingv1.NetworkPolicyPeer{fromPods(kc, componentServer)}
	if kc.Spec.Server.StoreKind() == chatv1.StoreJetStream {
		peers = append(peers, fromPods(kc, componentBackup))
	}
	return peers
}

// natsNetworkPolicy lets only the chat server reach NATS's clients port,
// and only NATS pods its cluster port. The WebSocket listener, when on, is
// for browsers through the ingress controller or the Gateway, and NATS's auth callout
// checks each.
func natsNetworkPolicy(kc *chatv1.KezChat) *networkingv1.NetworkPolicy {
	rules := []networkingv1.NetworkPolicyIngressRule{
		{From: natsClients(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(natsClientPort)}},
		{From: []networkingv1.NetworkPolicyPeer{fromPods(kc, componentNATS)}, Ports: []networkingv1.NetworkPolicyPort{tcpPort(natsClusterPort)}},
	}
	if kc.Spec.NATS.WebSocket {
		rules = append(rules, networkingv1.NetworkPolicyIngressRule{From: fromEdge(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(natsWebSocketPort)}})
	}
	if kc.Spec.Monitoring != nil {
		rules = append(rules, networkingv1.NetworkPolicyIngressRule{From: fromScrapers(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(natsExporterPort)}})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: namesOf(kc).nats(), Namespace: kc.Namespace, Labels: labels(kc, componentNATS)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selectorLabels(kc, componentNATS)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     rules,
		},
	}
}

// sigServerNetworkPolicy admits the sig-server's HTTP port from the chat
// server and, when the Ingress or the HTTPRoute routes /v1/keys to it,
// from the ingress controller and the Gateways' data plane (every write is signed by the identity's primary key, and
// reads are public by design); and its metrics port, like the chat
// server's, to the scrapers' namespace.
func sigServerNetworkPolicy(kc *chatv1.KezChat) *networkingv1.NetworkPolicy {
	api := networkingv1.NetworkPolicyIngressRule{
		From:  []networkingv1.NetworkPolicyPeer{fromPods(kc, componentServer)},
		Ports: []networkingv1.NetworkPolicyPort{tcpPort(sigServerPort)},
	}
	if kc.Spec.Ingress.IsEnabled() || kc.Spec.Gateway.IsEnabled() {
		if peers := fromEdge(kc); peers != nil {
			api.From = append(api.From, peers...)
		} else {
			api.From = nil // "*": anyone
		}
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: namesOf(kc).sigServer(), Namespace: kc.Namespace, Labels: labels(kc, componentSigServer)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selectorLabels(kc, componentSigServer)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				api,
				{From: fromScrapers(kc), Ports: []networkingv1.NetworkPolicyPort{tcpPort(sigMetricsPort)}},
			},
		},
	}
}

// podDisruptionBudget keeps all but one of a component's pods up through
// voluntary disruptions (node drains); made only when there is more than
// one pod to keep.
func podDisruptionBudget(kc *chatv1.KezChat, name, component string) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kc.Namespace, Labels: labels(kc, component)},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr.To(intstr.FromInt32(1)),
			Selector:       &metav1.LabelSelector{MatchLabels: selectorLabels(kc, component)},
		},
	}
}
