package controllers

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// egressGrants lists what a policy lets its pods connect to, one
// "<protocol>/<port> <to>" per port and peer: <to> is "*" for any address,
// or the component whose pods of the instance a rule names; a rule
// without ports grants "any".
func egressGrants(np *networkingv1.NetworkPolicy) []string {
	var out []string
	for _, rule := range np.Spec.Egress {
		to := []string{"*"}
		if len(rule.To) > 0 {
			to = nil
			for _, peer := range rule.To {
				switch {
				case peer.NamespaceSelector != nil || peer.IPBlock != nil || peer.PodSelector == nil:
					to = append(to, fmt.Sprintf("other:%+v", peer))
				default:
					to = append(to, peer.PodSelector.MatchLabels["app.kubernetes.io/component"])
				}
			}
		}
		ports := []string{"any"}
		if len(rule.Ports) > 0 {
			ports = nil
			for _, p := range rule.Ports {
				ports = append(ports, fmt.Sprintf("%s/%s", ptr.Deref(p.Protocol, corev1.ProtocolTCP), p.Port.String()))
			}
		}
		for _, p := range ports {
			for _, t := range to {
				out = append(out, p+" "+t)
			}
		}
	}
	slices.Sort(out)
	return out
}

// egressAllows reports whether np lets the pods it selects connect over
// protocol to port of a pod of their namespace labelled podLabels, or,
// with podLabels nil, of an address that is no pod of it (a DNS server, a
// push service, another chat server).
func egressAllows(np *networkingv1.NetworkPolicy, podLabels map[string]string, protocol corev1.Protocol, port int32) bool {
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		return true
	}
	for _, rule := range np.Spec.Egress {
		to := len(rule.To) == 0
		for _, peer := range rule.To {
			if peer.NamespaceSelector == nil && peer.IPBlock == nil && peer.PodSelector != nil && podLabels != nil &&
				k8slabels.SelectorFromSet(peer.PodSelector.MatchLabels).Matches(k8slabels.Set(podLabels)) {
				to = true
			}
		}
		on := len(rule.Ports) == 0
		for _, p := range rule.Ports {
			if ptr.Deref(p.Protocol, corev1.ProtocolTCP) == protocol && (p.Port == nil || p.Port.IntVal == port) {
				on = true
			}
		}
		if to && on {
			return true
		}
	}
	return false
}

func TestServerEgressOpensOnlyWhatTheServerConnectsTo(t *testing.T) {
	dns := []string{"TCP/53 *", "UDP/53 *"}
	instance := []string{"TCP/4222 nats", "TCP/7878 sig-server"}
	grants := func(lists ...[]string) []string {
		out := slices.Concat(lists...)
		slices.Sort(out)
		return out
	}
	https := []string{"TCP/443 *"}
	noPush := func(kc *chatv1.KezChat) { kc.Spec.Push.Enabled = ptr.To(false) }
	noFederation := func(kc *chatv1.KezChat) { kc.Spec.Federation.Enabled = ptr.To(false) }
	jetstream := func(kc *chatv1.KezChat) { kc.Spec.Server.Store = chatv1.StoreJetStream }
	env := func(vars ...corev1.EnvVar) func(*chatv1.KezChat) {
		return func(kc *chatv1.KezChat) { kc.Spec.Server.Env = vars }
	}
	recovery := func(endpoint string) func(*chatv1.KezChat) {
		return func(kc *chatv1.KezChat) {
			kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{BackupID: "20261202T030000Z-abcd1234",
				ObjectStore: chatv1.ObjectStoreSpec{Endpoint: endpoint, Bucket: "backups", InsecureHTTP: strings.HasPrefix(endpoint, "http:")}}}
		}
	}
	tests := []struct {
		name string
		spec []func(*chatv1.KezChat)
		want []string
	}{
		{"defaults: DNS, its NATS and sig-server, and HTTPS for push and federation", nil, grants(dns, instance, https)},
		{"HTTPS for federation without push", []func(*chatv1.KezChat){noPush}, grants(dns, instance, https)},
		{"HTTPS for push without federation", []func(*chatv1.KezChat){noFederation}, grants(dns, instance, https)},
		{"no HTTPS without push or federation", []func(*chatv1.KezChat){noPush, noFederation}, grants(dns, instance)},
		{"HTTPS for federation without push on jetstream", []func(*chatv1.KezChat){noPush, jetstream}, grants(dns, instance, https)},
		{"HTTPS for federation without push on jetstream chosen by replicas", []func(*chatv1.KezChat){noPush, func(kc *chatv1.KezChat) {
			kc.Spec.Server.Replicas = ptr.To[int32](3)
		}}, grants(dns, instance, https)},
		{"no HTTPS without push or federation on jetstream", []func(*chatv1.KezChat){noPush, noFederation, jetstream}, grants(dns, instance)},
		{"no NATS when it is off", []func(*chatv1.KezChat){func(kc *chatv1.KezChat) { kc.Spec.NATS.Enabled = ptr.To(false) }},
			grants(dns, []string{"TCP/7878 sig-server"}, https)},
		{"no sig-server when it is off", []func(*chatv1.KezChat){func(kc *chatv1.KezChat) { kc.Spec.SigServer.Enabled = ptr.To(false) }},
			grants(dns, []string{"TCP/4222 nats"}, https)},
		{"a recovery bucket on https", []func(*chatv1.KezChat){noPush, noFederation, recovery("https://s3.example.org")},
			grants(dns, instance, https)},
		{"a recovery bucket on its own port", []func(*chatv1.KezChat){recovery("http://minio.backups:9000/")},
			grants(dns, instance, []string{"TCP/443 *", "TCP/9000 *"})},
		{"a recovery bucket on plain http", []func(*chatv1.KezChat){noPush, noFederation, recovery("http://minio.backups")},
			grants(dns, instance, []string{"TCP/80 *"})},
		{"the user's NATS", []func(*chatv1.KezChat){env(corev1.EnvVar{Name: "KEZ_NATS_URL", Value: "nats://nats.shared:4333, tls://nats-b.shared,nats-c.shared:4444"})},
			grants(dns, instance, []string{"TCP/443 *", "TCP/4222 *", "TCP/4333 *", "TCP/4444 *"})},
		{"the user's sig-server", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_SIG_SERVER_URL", Value: "http://keys.shared:8080"})},
			grants(dns, instance, []string{"TCP/8080 *"})},
		{"the user's trusted push origins, not their host patterns", []func(*chatv1.KezChat){env(corev1.EnvVar{
			Name: "KEZ_PUSH_ALLOW_ENDPOINT", Value: "push.example.net,http://push.internal:8081, https://push.test,*.example.com"})},
			grants(dns, instance, []string{"TCP/443 *", "TCP/8081 *"})},
		{"the user's KEZ_FEDERATION", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_FEDERATION", Value: "true"})},
			grants(dns, instance, https)},
		{"the user's KEZ_FEDERATION=false", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_FEDERATION", Value: "false"})},
			grants(dns, instance)},
		{"the user's KEZ_VAPID_SUBJECT", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_VAPID_SUBJECT", Value: "mailto:me@example.org"})},
			grants(dns, instance, https)},
		{"the user's KEZ_FEDERATION from a ConfigMap", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_FEDERATION",
			ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "c"}, Key: "k"}}})},
			grants(dns, instance, https)},
		{"other variables change nothing", []func(*chatv1.KezChat){noPush, noFederation, env(corev1.EnvVar{Name: "KEZ_MAX_PENDING", Value: "50"})},
			grants(dns, instance)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			np := serverNetworkPolicy(newKezChat(tt.spec...))
			if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
				t.Errorf("policy types %v, want Ingress and Egress", np.Spec.PolicyTypes)
			}
			if got := egressGrants(np); !slices.Equal(got, tt.want) {
				t.Errorf("egress\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestServerEgressIsUnrestrictedWhenTheEnvHidesWhereTheServerConnects(t *testing.T) {
	fromSecret := &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"}}
	for _, e := range []corev1.EnvVar{
		{Name: "KEZ_NATS_URL", ValueFrom: fromSecret},
		{Name: "KEZ_SIG_SERVER_URL", ValueFrom: fromSecret},
		{Name: "KEZ_PUSH_ALLOW_ENDPOINT", ValueFrom: fromSecret},
		{Name: "KEZ_NATS_URL", Value: "nats://nats.shared:port"},
		{Name: "KEZ_SIG_SERVER_URL", Value: "gopher://keys.shared"},
	} {
		t.Run(e.Name+" "+e.Value, func(t *testing.T) {
			np := serverNetworkPolicy(newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Server.Env = []corev1.EnvVar{e} }))
			if slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(np.Spec.Egress) > 0 {
				t.Errorf("egress restricted to %q, where the server may connect anywhere", egressGrants(np))
			}
			if len(np.Spec.Ingress) != 2 {
				t.Errorf("ingress rules %+v", np.Spec.Ingress)
			}
		})
	}
}

// The server's egress admits every peer its Deployment is wired to, as
// the objects the operator makes say: the Service each URL in its
// environment names, that Service's pods and their port; and the
// recovery bucket of its restore init container. A builder that wires a
// new peer without opening the way to it fails here.
func TestServerEgressReachesEveryPeerItIsWiredTo(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec func(*chatv1.KezChat)
	}{
		{"defaults", func(*chatv1.KezChat) {}},
		{"jetstream on three NATS servers", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Replicas = ptr.To[int32](3)
			kc.Spec.NATS.Replicas = ptr.To[int32](3)
		}},
		{"recovered from a bucket", func(kc *chatv1.KezChat) {
			kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{BackupID: "20261202T030000Z-abcd1234",
				ObjectStore: chatv1.ObjectStoreSpec{Endpoint: "http://versitygw.backups:7070", Bucket: "backups", InsecureHTTP: true}}}
		}},
		{"push and federation off", func(kc *chatv1.KezChat) {
			kc.Spec.Push.Enabled = ptr.To(false)
			kc.Spec.Federation.Enabled = ptr.To(false)
		}},
		{"jetstream federating without push", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store = chatv1.StoreJetStream
			kc.Spec.Push.Enabled = ptr.To(false)
		}},
		{"jetstream with push and federation off", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store = chatv1.StoreJetStream
			kc.Spec.Push.Enabled = ptr.To(false)
			kc.Spec.Federation.Enabled = ptr.To(false)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(tt.spec)
			var np *networkingv1.NetworkPolicy
			var server *appsv1.Deployment
			services := map[string]*corev1.Service{}
			var templates []corev1.PodTemplateSpec
			for _, obj := range desiredObjects(kc, testInputs) {
				switch o := obj.(type) {
				case *networkingv1.NetworkPolicy:
					if o.Name == namesOf(kc).server() {
						np = o
					}
				case *corev1.Service:
					services[o.Name] = o
				case *appsv1.Deployment:
					templates = append(templates, o.Spec.Template)
					if o.Name == namesOf(kc).server() {
						server = o
					}
				case *appsv1.StatefulSet:
					templates = append(templates, o.Spec.Template)
				}
			}
			pod := server.Spec.Template.Spec
			if !egressAllows(np, nil, corev1.ProtocolUDP, 53) || !egressAllows(np, nil, corev1.ProtocolTCP, 53) {
				t.Error("no DNS")
			}
			wired := 0
			for _, e := range pod.Containers[0].Env {
				if !strings.HasSuffix(e.Name, "_URL") {
					continue
				}
				wired++
				u, err := url.Parse(e.Value)
				if err != nil {
					t.Fatal(err)
				}
				svc := services[u.Hostname()]
				if svc == nil {
					t.Fatalf("%s=%s names no Service of the instance", e.Name, e.Value)
				}
				var target string
				for _, p := range svc.Spec.Ports {
					if fmt.Sprint(p.Port) == u.Port() {
						target = p.TargetPort.String()
					}
				}
				reached := false
				for _, tpl := range templates {
					if !k8slabels.SelectorFromSet(svc.Spec.Selector).Matches(k8slabels.Set(tpl.Labels)) {
						continue
					}
					for _, c := range tpl.Spec.Containers {
						for _, p := range c.Ports {
							if p.Name == target || fmt.Sprint(p.ContainerPort) == target {
								reached = true
								if !egressAllows(np, tpl.Labels, p.Protocol, p.ContainerPort) {
									t.Errorf("%s=%s: the server may not connect to port %d of %v", e.Name, e.Value, p.ContainerPort, tpl.Labels)
								}
							}
						}
					}
				}
				if !reached {
					t.Errorf("%s=%s: no pod behind Service %s port %s", e.Name, e.Value, svc.Name, u.Port())
				}
			}
			if wired == 0 {
				t.Error("the server is wired to nothing: the test sees no URL in its env")
			}
			for _, c := range pod.InitContainers {
				for _, a := range c.Args {
					if endpoint, ok := strings.CutPrefix(a, "--s3-endpoint="); ok {
						if !egressAllows(np, nil, corev1.ProtocolTCP, endpointPort(endpoint)) {
							t.Errorf("init container %s may not reach %s", c.Name, endpoint)
						}
					}
				}
			}
			// Web Push and federation, on public addresses: 443 open
			// exactly when push is on or the server runs with
			// KEZ_FEDERATION=true, whatever the store.
			federating := false
			for _, e := range pod.Containers[0].Env {
				if e.Name == "KEZ_FEDERATION" {
					federating = e.Value == "true"
				}
			}
			if federating != kc.Spec.Federation.IsEnabled() {
				t.Errorf("KEZ_FEDERATION=true %v with spec.federation.enabled %v on %s", federating, kc.Spec.Federation.IsEnabled(), kc.Spec.Server.StoreKind())
			}
			if https := egressAllows(np, nil, corev1.ProtocolTCP, 443); https != (kc.Spec.Push.IsEnabled() || federating) {
				t.Errorf("443 open %v with push %v and KEZ_FEDERATION=true %v", https, kc.Spec.Push.IsEnabled(), federating)
			}
			// Nothing else of the cluster: not the Kubernetes API, not
			// another port of its own pods.
			for _, port := range []int32{6443, serverPort, natsClusterPort, natsMonitorPort, sigMetricsPort} {
				if egressAllows(np, selectorLabels(kc, componentNATS), corev1.ProtocolTCP, port) || egressAllows(np, nil, corev1.ProtocolTCP, port) {
					t.Errorf("port %d open", port)
				}
			}
		})
	}
}

func TestOnlyTheServerPodsEgressIsRestricted(t *testing.T) {
	kc := newKezChat()
	for _, np := range []*networkingv1.NetworkPolicy{natsNetworkPolicy(kc), sigServerNetworkPolicy(kc)} {
		if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) || len(np.Spec.Egress) > 0 {
			t.Errorf("%s: policy types %v, egress %+v", np.Name, np.Spec.PolicyTypes, np.Spec.Egress)
		}
	}
}
