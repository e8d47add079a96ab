package controllers

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/testutil"
)

func newKezChat(mutate ...func(*chatv1.KezChat)) *chatv1.KezChat {
	kc := &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: "team", Generation: 1},
		Spec:       chatv1.KezChatSpec{Domain: "chat.example.org"},
	}
	for _, m := range mutate {
		m(kc)
	}
	return kc
}

var testInputs = Inputs{
	DefaultImage: "registry.example/kezchat:v1", VAPIDSecret: "chat-vapid", VAPIDDigest: "d1",
	NATSAuth: natsAuth{secretName: "chat-nats-auth", issuer: testIssuer, digest: "n1"},
}

// testIssuer is an account public key, as the NATS auth Secret holds.
var testIssuer = func() string {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		panic(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}()

// kindNames lists objects as "Kind/name", the kind from the Go type.
func kindNames(objs []client.Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, fmt.Sprintf("%T/%s", o, o.GetName()))
	}
	slices.Sort(out)
	return out
}

func TestDesiredObjectsDependOnTheSpec(t *testing.T) {
	all := []string{
		"*v1.ConfigMap/chat-nats-config",
		"*v1.Deployment/chat-server", "*v1.Deployment/chat-sig-server",
		"*v1.Ingress/chat",
		"*v1.NetworkPolicy/chat-nats", "*v1.NetworkPolicy/chat-server", "*v1.NetworkPolicy/chat-sig-server",
		"*v1.PersistentVolumeClaim/chat-server-data", "*v1.PersistentVolumeClaim/chat-sig-server-data",
		"*v1.Service/chat-nats", "*v1.Service/chat-nats-headless", "*v1.Service/chat-server", "*v1.Service/chat-sig-server",
		"*v1.ServiceAccount/chat",
		"*v1.StatefulSet/chat-nats",
	}
	without := func(drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(all), func(s string) bool { return slices.Contains(drop, s) })
	}
	with := func(add ...string) []string {
		out := append(slices.Clone(all), add...)
		slices.Sort(out)
		return out
	}
	tests := []struct {
		name string
		spec func(*chatv1.KezChat)
		want []string
	}{
		{"defaults give the whole instance", func(*chatv1.KezChat) {}, all},
		{"NATS off drops its objects", func(kc *chatv1.KezChat) { kc.Spec.NATS.Enabled = ptr.To(false) },
			without("*v1.ConfigMap/chat-nats-config", "*v1.NetworkPolicy/chat-nats", "*v1.Service/chat-nats", "*v1.Service/chat-nats-headless", "*v1.StatefulSet/chat-nats")},
		{"sig-server off drops its objects", func(kc *chatv1.KezChat) { kc.Spec.SigServer.Enabled = ptr.To(false) },
			without("*v1.Deployment/chat-sig-server", "*v1.NetworkPolicy/chat-sig-server", "*v1.PersistentVolumeClaim/chat-sig-server-data", "*v1.Service/chat-sig-server")},
		{"ingress off drops the Ingress", func(kc *chatv1.KezChat) { kc.Spec.Ingress.Enabled = ptr.To(false) },
			without("*v1.Ingress/chat")},
		{"replicas, so jetstream, have no server volume and a budget", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Replicas = ptr.To[int32](3)
		}, func() []string {
			out := without("*v1.PersistentVolumeClaim/chat-server-data")
			out = append(out, "*v1.PodDisruptionBudget/chat-server")
			slices.Sort(out)
			return out
		}()},
		{"three NATS replicas get a budget", func(kc *chatv1.KezChat) { kc.Spec.NATS.Replicas = ptr.To[int32](3) },
			with("*v1.PodDisruptionBudget/chat-nats")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(tt.spec)
			got := kindNames(desiredObjects(kc, testInputs))
			if !slices.Equal(got, tt.want) {
				t.Errorf("desired objects:\n got %q\nwant %q", got, tt.want)
			}
			// Nothing is both wanted and deleted.
			for _, u := range kindNames(unwantedObjects(kc, testInputs)) {
				if slices.Contains(got, u) {
					t.Errorf("%s is both desired and unwanted", u)
				}
			}
		})
	}
}

func TestUnwantedObjectsNeverIncludeVolumes(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.NATS.Enabled, kc.Spec.SigServer.Enabled, kc.Spec.Ingress.Enabled = ptr.To(false), ptr.To(false), ptr.To(false)
	})
	got := kindNames(unwantedObjects(kc, testInputs))
	for _, name := range got {
		if strings.Contains(name, "PersistentVolumeClaim") {
			t.Errorf("unwanted objects include volume %s", name)
		}
	}
	if !slices.Contains(got, "*v1.StatefulSet/chat-nats") || !slices.Contains(got, "*v1.Ingress/chat") {
		t.Errorf("unwanted objects %q miss the disabled components", got)
	}
}

// podSpecs are the pod templates of the workloads among objs.
func podSpecs(objs []client.Object) map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for _, o := range objs {
		switch w := o.(type) {
		case *appsv1.Deployment:
			out[w.Name] = w.Spec.Template
		case *appsv1.StatefulSet:
			out[w.Name] = w.Spec.Template
		}
	}
	return out
}

func TestEveryPodIsHardened(t *testing.T) {
	pods := podSpecs(desiredObjects(newKezChat(), testInputs))
	if len(pods) != 3 {
		t.Fatalf("want 3 workloads, got %d", len(pods))
	}
	for name, pod := range pods {
		ps := pod.Spec
		if ps.SecurityContext == nil || !ptr.Deref(ps.SecurityContext.RunAsNonRoot, false) ||
			ps.SecurityContext.SeccompProfile == nil || ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod security context %+v is not non-root with RuntimeDefault seccomp", name, ps.SecurityContext)
		}
		if ptr.Deref(ps.AutomountServiceAccountToken, true) {
			t.Errorf("%s mounts a service account token it has no use for", name)
		}
		for _, c := range ps.Containers {
			sc := c.SecurityContext
			if sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("%s/%s: container security context %+v is not locked down", name, c.Name, sc)
			}
			if c.LivenessProbe == nil || c.ReadinessProbe == nil {
				t.Errorf("%s/%s has no liveness or readiness probe", name, c.Name)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s/%s requests no resources", name, c.Name)
			}
		}
	}
	// The probes must hit the server's health routes, not the web app at
	// /, which answers 200 to anything.
	srv := testutil.StartServer(t, testutil.Options{})
	for _, name := range []string{"chat-server"} {
		c := pods[name].Spec.Containers[0]
		for probe, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			res, err := http.Get(srv.URL + p.HTTPGet.Path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || !strings.Contains(res.Header.Get("Content-Type"), "json") {
				t.Errorf("%s %s probe %s: %d %s %.80q; want the server's JSON health answer", name, probe, p.HTTPGet.Path, res.StatusCode, res.Header.Get("Content-Type"), body)
			}
		}
	}
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func TestServerDeploymentWiring(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Server.Env = []corev1.EnvVar{{Name: "KEZ_TRUSTED_PROXIES", Value: "10.1.0.0/16"}, {Name: "KEZ_MAX_PENDING", Value: "50"}}
		kc.Spec.Server.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}
	})
	d := serverDeployment(kc, testInputs)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != testInputs.DefaultImage {
		t.Errorf("image %q, want the operator's %q", c.Image, testInputs.DefaultImage)
	}
	for _, arg := range []string{"--domain=chat.example.org", "--public-url=http://chat.example.org", "--db=/var/lib/kez-chat/kez-chat.db",
		"--vapid-subject=mailto:admin@chat.example.org", "--vapid-key-path=/etc/kez-chat/vapid/private-key.pem", "--retention=720h0m0s"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %s", c.Args, arg)
		}
	}
	for name, want := range map[string]string{
		"KEZ_NATS_URL":        "nats://chat-nats:4222",
		"KEZ_SIG_SERVER_URL":  "http://chat-sig-server:7878",
		"KEZ_STORE":           "sqlite",
		"KEZ_TRUSTED_PROXIES": "10.1.0.0/16", // the user's value wins
		"KEZ_MAX_PENDING":     "50",
	} {
		if got, ok := envValue(c, name); !ok || got != want {
			t.Errorf("env %s = %q (set %v), want %q", name, got, ok, want)
		}
	}
	names := map[string]int{}
	for _, e := range c.Env {
		names[e.Name]++
		if names[e.Name] > 1 {
			t.Errorf("env %s appears twice", e.Name)
		}
	}
	if names["GOMEMLIMIT"] != 0 {
		t.Error("GOMEMLIMIT is set: it would override the 90% of the cgroup's limit the server takes itself")
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("a SQLite server rolls by %s, want Recreate (one pod holds the volume)", d.Spec.Strategy.Type)
	}

	kc.Spec.Image = "mine:1"
	kc.Spec.Push.Enabled = ptr.To(false)
	d = serverDeployment(kc, Inputs{DefaultImage: "op:1"})
	c = d.Spec.Template.Spec.Containers[0]
	if c.Image != "mine:1" {
		t.Errorf("spec image ignored: %q", c.Image)
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--vapid") {
			t.Errorf("push off, yet arg %s", a)
		}
	}
}

func TestOnlyTheNamedProxiesAreTrusted(t *testing.T) {
	for _, d := range []*appsv1.Deployment{serverDeployment(newKezChat(), testInputs), sigServerDeployment(newKezChat(), testInputs)} {
		if v, ok := envValue(d.Spec.Template.Spec.Containers[0], "KEZ_TRUSTED_PROXIES"); ok {
			t.Errorf("%s trusts %q by default, want no proxy", d.Name, v)
		}
	}
	kc := newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Ingress.TrustedProxies = []string{"10.244.0.0/16", "fd00:10:244::/56"}
	})
	for _, d := range []*appsv1.Deployment{serverDeployment(kc, testInputs), sigServerDeployment(kc, testInputs)} {
		if v, _ := envValue(d.Spec.Template.Spec.Containers[0], "KEZ_TRUSTED_PROXIES"); v != "10.244.0.0/16,fd00:10:244::/56" {
			t.Errorf("%s trusts %q, want the spec's ranges", d.Name, v)
		}
	}
}

func TestStorageLimitsFollowTheVolumeAndTheRetention(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec func(*chatv1.KezChat)
		want []string
	}{
		// 1 GiB: 966,367,638 bytes for the database; 70% of that over 30 days.
		// An attachment is at most a handle's day's quota, below the 25Mi default.
		{"the default volume", func(*chatv1.KezChat) {}, []string{"--max-db-bytes=966367638", "--address-quota-bytes=22548578",
			"--sender-quota-bytes=11274289", "--max-blob-bytes=11274289"}},
		{"10 GiB kept 7 days", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("10Gi"))
			kc.Spec.Server.Retention = &metav1.Duration{Duration: 7 * 24 * time.Hour}
		}, []string{"--max-db-bytes=9663676416", "--address-quota-bytes=966367641", "--sender-quota-bytes=483183820", "--max-blob-bytes=26214400"}},
		{"JetStream: the NATS volume's", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Replicas = ptr.To[int32](2)
			kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("2Gi"))
		}, []string{"--address-quota-bytes=45097156", "--sender-quota-bytes=22548578", "--max-blob-bytes=22548578"}},
		{"attachments of at most 5Mi", func(kc *chatv1.KezChat) {
			kc.Spec.Attachments.MaxSize = ptr.To(resource.MustParse("5Mi"))
		}, []string{"--max-db-bytes=966367638", "--sender-quota-bytes=11274289", "--max-blob-bytes=5242880"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := serverDeployment(newKezChat(tt.spec), testInputs).Spec.Template.Spec.Containers[0].Args
			for _, want := range tt.want {
				if !slices.Contains(args, want) {
					t.Errorf("args %q lack %s", args, want)
				}
			}
			if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--max-db-bytes") }) != strings.HasPrefix(tt.want[0], "--max-db-bytes") {
				t.Errorf("args %q: --max-db-bytes only for SQLite", args)
			}
		})
	}
}

func TestServerPodTemplateChangesWithTheVAPIDKey(t *testing.T) {
	kc := newKezChat()
	a := serverDeployment(kc, testInputs).Spec.Template.Annotations[configHashAnnotation]
	in := testInputs
	in.VAPIDDigest = "d2"
	b := serverDeployment(kc, in).Spec.Template.Annotations[configHashAnnotation]
	if a == "" || a == b {
		t.Errorf("config hash %q -> %q: a new key must roll the pods", a, b)
	}
	if a != serverDeployment(kc, testInputs).Spec.Template.Annotations[configHashAnnotation] {
		t.Error("config hash is not stable for the same inputs")
	}
}

func TestNATSConfig(t *testing.T) {
	one := natsConf(newKezChat(), testInputs)
	three := natsConf(newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.NATS.Replicas = ptr.To[int32](3)
		kc.Spec.NATS.WebSocket = true
		kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("10Gi"))
	}), testInputs)
	for _, want := range []string{"jetstream {", "store_dir: /data", "sync_interval: always", "port: 4222", "max_file_store: 966367638",
		"authorization {", "users: [ { user: kezchat, password: $KEZ_NATS_PASSWORD } ]", "issuer: " + testIssuer, "auth_users: [ kezchat ]"} {
		if !strings.Contains(one, want) {
			t.Errorf("single-node config lacks %q:\n%s", want, one)
		}
	}
	if strings.Contains(one, "cluster {") || strings.Contains(one, "websocket {") {
		t.Errorf("single-node config without websocket has a cluster or websocket block:\n%s", one)
	}
	for _, want := range []string{"cluster {", "nats://chat-nats-2.chat-nats-headless.team.svc:6222", "websocket {", "port: 8080", "max_file_store: 9663676416"} {
		if !strings.Contains(three, want) {
			t.Errorf("clustered config lacks %q:\n%s", want, three)
		}
	}
	if strings.Contains(three, "sync_interval") {
		t.Errorf("a three-node cluster syncs every write: it has peers for that:\n%s", three)
	}
	sts := natsStatefulSet(newKezChat(), testInputs)
	if sts.Spec.Template.Annotations[configHashAnnotation] != digest([]byte(one), []byte("n1")) {
		t.Error("the NATS pod template does not carry its config's digest")
	}
	if v, _ := envValue(sts.Spec.Template.Spec.Containers[0], natsPasswordEnv); v != "" {
		t.Error("the NATS password is in the pod spec as a value")
	}
}

// The generated nats.conf is what nats-server itself accepts: parsed by
// its own config loader, with the password from the environment as the
// pod gives it.
func TestNATSConfigLoadsInNATSServer(t *testing.T) {
	t.Setenv(natsPasswordEnv, "s3cret-from-the-secret")
	t.Setenv("POD_NAME", "chat-nats-0")
	for name, kc := range map[string]*chatv1.KezChat{
		"single": newKezChat(),
		"cluster with websocket": newKezChat(func(kc *chatv1.KezChat) {
			kc.Spec.NATS.Replicas = ptr.To[int32](3)
			kc.Spec.NATS.WebSocket = true
		}),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "nats.conf")
			if err := os.WriteFile(path, []byte(natsConf(kc, testInputs)), 0o600); err != nil {
				t.Fatal(err)
			}
			opts, err := natsserver.ProcessConfigFile(path)
			if err != nil {
				t.Fatalf("nats-server refuses the config: %v", err)
			}
			if opts.ServerName != "chat-nats-0" || !opts.JetStream || opts.StoreDir != "/data" {
				t.Errorf("server name %q, jetstream %v at %q", opts.ServerName, opts.JetStream, opts.StoreDir)
			}
			if len(opts.Users) != 1 || opts.Users[0].Username != natsUser || opts.Users[0].Password != "s3cret-from-the-secret" {
				t.Errorf("users %+v", opts.Users)
			}
			if opts.AuthCallout == nil || opts.AuthCallout.Issuer != testIssuer || len(opts.AuthCallout.AuthUsers) != 1 {
				t.Errorf("auth callout %+v", opts.AuthCallout)
			}
			if ws := kc.Spec.NATS.WebSocket; ws != (opts.Websocket.Port == natsWebSocketPort) {
				t.Errorf("websocket port %d with websocket %v", opts.Websocket.Port, ws)
			}
		})
	}
}

func TestServerGetsItsNATSCredentialsFromTheSecret(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Server.Replicas = ptr.To[int32](2)
		kc.Spec.NATS.Replicas = ptr.To[int32](3)
	})
	c := serverDeployment(kc, testInputs).Spec.Template.Spec.Containers[0]
	for name, want := range map[string]string{
		"KEZ_STORE": "jetstream", "KEZ_JETSTREAM_REPLICAS": "3", "KEZ_NATS_USER": "kezchat",
		"KEZ_NATS_PASSWORD_FILE":            "/etc/kez-chat/nats/password",
		"KEZ_NATS_CALLOUT_ISSUER_SEED_FILE": "/etc/kez-chat/nats/callout-issuer-seed",
	} {
		if got, _ := envValue(c, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.MountPath == natsAuthDir && m.ReadOnly)
	}
	if !mounted {
		t.Error("the NATS auth Secret is not mounted read-only")
	}
	in := testInputs
	in.NATSAuth.digest = "n2"
	if serverDeployment(kc, in).Spec.Template.Annotations[configHashAnnotation] == serverDeployment(kc, testInputs).Spec.Template.Annotations[configHashAnnotation] {
		t.Error("new NATS credentials do not roll the server")
	}
}

func TestIngressRoutesTheChatHost(t *testing.T) {
	ing := ingress(newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Ingress.TLSSecretName = "chat-tls" }))
	rule := ing.Spec.Rules[0]
	if rule.Host != "chat.example.org" {
		t.Errorf("host %q, want the domain", rule.Host)
	}
	var paths []string
	for _, p := range rule.HTTP.Paths {
		paths = append(paths, p.Path)
		want := "chat-server"
		if p.Path == "/v1/keys" {
			want = "chat-sig-server" // the key directory, at the chat's origin
		}
		if p.Backend.Service.Name != want || *p.PathType != networkingv1.PathTypePrefix {
			t.Errorf("path %s goes to %s (%s), want %s", p.Path, p.Backend.Service.Name, *p.PathType, want)
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, []string{"/", "/.well-known", "/v1", "/v1/keys"}) {
		t.Errorf("paths %q", paths)
	}
	if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "chat-tls" || ing.Spec.TLS[0].Hosts[0] != "chat.example.org" {
		t.Errorf("TLS %+v", ing.Spec.TLS)
	}
	// With NATS's WebSocket on, /nats goes to it.
	ws := ingress(newKezChat(func(kc *chatv1.KezChat) { kc.Spec.NATS.WebSocket = true }))
	var natsPath *networkingv1.HTTPIngressPath
	for i, p := range ws.Spec.Rules[0].HTTP.Paths {
		if p.Path == "/nats" {
			natsPath = &ws.Spec.Rules[0].HTTP.Paths[i]
		}
	}
	if natsPath == nil || natsPath.Backend.Service.Name != "chat-nats" || natsPath.Backend.Service.Port.Name != "websocket" {
		t.Errorf("websocket on, /nats route %+v", natsPath)
	}
	if got := PublicURL(newKezChat()); got != "http://chat.example.org" {
		t.Errorf("URL without TLS %q", got)
	}
	if got := PublicURL(newKezChat(func(kc *chatv1.KezChat) {
		kc.Spec.Ingress.Host = "talk.example.org"
		kc.Spec.Ingress.TLSSecretName = "x"
	})); got != "https://talk.example.org" {
		t.Errorf("URL with TLS and host %q", got)
	}
}

// openPorts are the ports a NetworkPolicy admits from anywhere, and
// peerComponents the components it admits on the others.
// openPorts lists the ports a policy opens to anyone, and the peers it
// admits by rule: a component's pods by name, a namespace as "ns:<name>".
func openPorts(np *networkingv1.NetworkPolicy) (open []int32, peers []string) {
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			for _, p := range rule.Ports {
				open = append(open, p.Port.IntVal)
			}
			continue
		}
		for _, peer := range rule.From {
			switch {
			case peer.NamespaceSelector != nil:
				name := "ns:" + peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
				if peer.PodSelector != nil {
					name += "/" + peer.PodSelector.MatchLabels["app.kubernetes.io/name"]
				}
				peers = append(peers, name)
			default:
				peers = append(peers, peer.PodSelector.MatchLabels["app.kubernetes.io/component"])
			}
		}
	}
	slices.Sort(open)
	slices.Sort(peers)
	return open, slices.Compact(peers)
}

func TestNetworkPoliciesAdmitOnlyWhatEachPartNeeds(t *testing.T) {
	noIngress := func(kc *chatv1.KezChat) { kc.Spec.Ingress.Enabled = ptr.To(false) }
	websocket := func(kc *chatv1.KezChat) { kc.Spec.NATS.WebSocket = true }
	controllerPods := func(kc *chatv1.KezChat) {
		kc.Spec.Ingress.ControllerNamespace = "traefik"
		kc.Spec.Ingress.ControllerPodLabels = map[string]string{"app.kubernetes.io/name": "traefik"}
	}
	anyNamespace := func(kc *chatv1.KezChat) { kc.Spec.Ingress.ControllerNamespace = "*" }
	tests := []struct {
		name  string
		np    func(*chatv1.KezChat) *networkingv1.NetworkPolicy
		spec  func(*chatv1.KezChat)
		open  []int32
		peers []string
	}{
		{"server: HTTP from the ingress controller's namespace, metrics from the monitoring namespace", serverNetworkPolicy, func(*chatv1.KezChat) {}, nil, []string{"ns:ingress-nginx", "ns:monitoring"}},
		{"server: HTTP from the controller's own pods", serverNetworkPolicy, controllerPods, nil, []string{"ns:monitoring", "ns:traefik/traefik"}},
		{"server: HTTP from anywhere without an Ingress", serverNetworkPolicy, noIngress, []int32{serverPort}, []string{"ns:monitoring"}},
		{"server: HTTP from anywhere with the namespace *", serverNetworkPolicy, anyNamespace, []int32{serverPort}, []string{"ns:monitoring"}},
		{"NATS: clients from the server, routes from NATS", natsNetworkPolicy, func(*chatv1.KezChat) {}, nil, []string{componentNATS, componentServer}},
		{"NATS: clients from the backup Jobs too on JetStream", natsNetworkPolicy, func(kc *chatv1.KezChat) { kc.Spec.Server.Store = chatv1.StoreJetStream }, nil, []string{componentBackup, componentNATS, componentServer}},
		{"NATS: WebSocket from the ingress controller when on", natsNetworkPolicy, websocket, nil, []string{componentNATS, "ns:ingress-nginx", componentServer}},
		{"sig-server: API from the server only without an Ingress", sigServerNetworkPolicy, noIngress, nil, []string{"ns:monitoring", componentServer}},
		{"sig-server: API from the server and the ingress controller when the Ingress routes /v1/keys", sigServerNetworkPolicy, func(*chatv1.KezChat) {}, nil, []string{"ns:ingress-nginx", "ns:monitoring", componentServer}},
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
