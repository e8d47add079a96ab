package controllers

import (
	"net/url"
	"slices"
	"strconv"
	"strings"

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
// port to the scrapers' namespace (spec.monitoring.scraperNamespace). It
// lets the chat server's pods connect only where serverEgress says.
func serverNetworkPolicy(kc *chatv1.KezChat) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
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
	if egress, known := serverEgress(kc); known {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		np.Spec.Egress = egress
	}
	return np
}

// serverEgress is where the chat server's pods may connect: every
// connection they open, and no other, so that a server made to dial
// somewhere it should not (a hostile push endpoint or federation peer
// whose DNS points inside the cluster) reaches nothing there. The server
// refuses non-public addresses itself for those; this holds whatever the
// server does. The pods open (replies to connections made to them need no
// rule):
//
//   - DNS, UDP and TCP port 53, to any address: the cluster's DNS
//     Service, a node-local cache on a link-local address, or whatever
//     the pod's resolv.conf names, which differs between clusters.
//   - NATS (spec.nats.enabled): its clients port on this KezChat's NATS
//     pods, for the broker, the jetstream store and the NATS auth
//     callout; a NATS cluster advertises its other servers at their pod
//     addresses on the same port.
//   - The sig-server (spec.sigServer.enabled): its HTTP port on this
//     KezChat's sig-server pod, where the server resolves device keys.
//   - HTTPS, TCP port 443, to any address, while Web Push is on (the
//     browsers' push services) or the server federates (other servers'
//     deliveries, WebFinger, records and key documents, always at
//     https://<domain>): both are on public addresses anywhere.
//   - With spec.bootstrap, the restore init container (in the same pod)
//     reads the recovery bucket: the endpoint's port (given, or 443 for
//     https and 80 for http), to any address; on jetstream it writes
//     through this KezChat's NATS, above.
//   - What spec.server.env points the server at beyond the operator's
//     wiring (userEgressPorts): the ports of KEZ_NATS_URL,
//     KEZ_SIG_SERVER_URL and the origins of KEZ_PUSH_ALLOW_ENDPOINT, to
//     any address, and 443 for KEZ_FEDERATION=true or KEZ_VAPID_SUBJECT.
//
// Nothing else: the pods call no Kubernetes API (no token is mounted),
// nothing of the operator, and no object store but the recovery one;
// backups run in Jobs whose pods this policy does not select. When one of
// those variables comes from a Secret or ConfigMap (valueFrom), where the
// server connects is unknown here: known is false, and the policy
// restricts no egress, as before there was any.
func serverEgress(kc *chatv1.KezChat) (rules []networkingv1.NetworkPolicyEgressRule, known bool) {
	user, known := userEgressPorts(kc.Spec.Server.Env)
	if !known {
		return nil, false
	}
	rules = append(rules, networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{
		{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))},
		tcpPort(53),
	}})
	if kc.Spec.NATS.IsEnabled() {
		rules = append(rules, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{fromPods(kc, componentNATS)}, Ports: []networkingv1.NetworkPolicyPort{tcpPort(natsClientPort)},
		})
	}
	if kc.Spec.SigServer.IsEnabled() {
		rules = append(rules, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{fromPods(kc, componentSigServer)}, Ports: []networkingv1.NetworkPolicyPort{tcpPort(sigServerPort)},
		})
	}
	anywhere := user
	if kc.Spec.Push.IsEnabled() || federates(kc) {
		anywhere = append(anywhere, 443)
	}
	if kc.Spec.Bootstrap != nil {
		anywhere = append(anywhere, endpointPort(kc.Spec.Bootstrap.Recovery.ObjectStore.Endpoint))
	}
	slices.Sort(anywhere)
	if anywhere = slices.Compact(anywhere); len(anywhere) > 0 {
		rule := networkingv1.NetworkPolicyEgressRule{}
		for _, p := range anywhere {
			rule.Ports = append(rule.Ports, tcpPort(p))
		}
		rules = append(rules, rule)
	}
	return rules, true
}

// endpointPort is the TCP port an http(s) URL connects to; 443 when it
// names none and is not http (the CRD admits only http and https object
// store endpoints).
func endpointPort(endpoint string) int32 {
	u, err := url.Parse(endpoint)
	if err == nil {
		if p, err := strconv.ParseUint(u.Port(), 10, 16); err == nil && p > 0 {
			return int32(p)
		}
		if u.Scheme == "http" {
			return 80
		}
	}
	return 443
}

// defaultPorts are the ports of URLs that name none, by scheme: the
// server's HTTP clients' and the NATS client's.
var defaultPorts = map[string]int32{"http": 80, "https": 443, "nats": natsClientPort, "tls": natsClientPort, "ws": 80, "wss": 443}

// userEgressPorts are the ports, to any address, of what spec.server.env
// points the chat server at beyond the operator's wiring, which its
// values replace (mergeEnv): another NATS (KEZ_NATS_URL, a comma-separated
// list, 4222 unless given), another sig-server (KEZ_SIG_SERVER_URL), the
// trusted push origins of KEZ_PUSH_ALLOW_ENDPOINT (the other entries are
// host patterns held to https on 443), and 443 for KEZ_FEDERATION=true or
// a KEZ_VAPID_SUBJECT. known is false when one of the URLs comes from
// valueFrom, or does not parse: the server may then connect anywhere.
func userEgressPorts(env []corev1.EnvVar) (ports []int32, known bool) {
	for _, e := range env {
		var urls []string
		switch e.Name {
		case "KEZ_NATS_URL", "KEZ_SIG_SERVER_URL":
			urls = strings.Split(e.Value, ",")
		case "KEZ_PUSH_ALLOW_ENDPOINT":
			for _, entry := range strings.Split(e.Value, ",") {
				if strings.Contains(entry, "://") {
					urls = append(urls, entry)
				}
			}
		case "KEZ_FEDERATION", "KEZ_VAPID_SUBJECT":
			// Either turns on connections to https://<name> on 443 alone,
			// so one from valueFrom costs no more than 443.
			if on, _ := strconv.ParseBool(e.Value); e.ValueFrom != nil || on || (e.Name == "KEZ_VAPID_SUBJECT" && e.Value != "") {
				ports = append(ports, 443)
			}
			continue
		default:
			continue
		}
		if e.ValueFrom != nil {
			return nil, false
		}
		for _, raw := range urls {
			raw = strings.TrimSpace(raw)
			if raw == "" {
				continue
			}
			if !strings.Contains(raw, "://") && e.Name == "KEZ_NATS_URL" {
				raw = "nats://" + raw // as the NATS client reads it
			}
			u, err := url.Parse(raw)
			if err != nil || u.Host == "" {
				return nil, false
			}
			switch p, err := strconv.ParseUint(u.Port(), 10, 16); {
			case err == nil && p > 0:
				ports = append(ports, int32(p))
			case u.Port() != "":
				return nil, false
			case defaultPorts[u.Scheme] != 0:
				ports = append(ports, defaultPorts[u.Scheme])
			default:
				return nil, false
			}
		}
	}
	return ports, true
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
