// Package charts holds the Helm chart kez-chat-operator and its tests, which
// run the helm that `make k8s-tools` builds: helm lint, helm template with
// several value sets, and an install, upgrade, uninstall and reinstall on a
// real kube-apiserver (envtest).
package charts

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"kez.lat/chat/monitoring"
)

const chart = "kez-chat-operator"

// toolsDir is where `make k8s-tools` builds helm and kubectl.
func toolsDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", "../hack/tools/install-k8s-tools.sh", "--print-dir").Output()
	if err != nil {
		t.Fatalf("install-k8s-tools.sh --print-dir: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// helm runs the helm `make k8s-tools` built, from this directory.
func helm(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(toolsDir(t), "helm")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no helm in %s: run `make k8s-tools` (or `make test`, which does) to build it", filepath.Dir(bin))
	}
	cmd := exec.Command(bin, args...)
	home := t.TempDir()
	// Nothing from the user's helm configuration or cluster.
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + filepath.Join(home, "no-kubeconfig"),
	}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), err
}

// render is `helm template` of the chart with --set values, as release
// "kc" in namespace "kez-chat-system", decoded into objects.
func render(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "kc", chart, "--namespace", "kez-chat-system"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(t, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding helm template's output: %v", err)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, u := range objs {
		if u.GetKind() == kind && (name == "" || u.GetName() == name) {
			return u
		}
	}
	return nil
}

func kinds(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, u := range objs {
		s := u.GetKind() + "/" + u.GetName()
		if ns := u.GetNamespace(); ns != "" {
			s = ns + "/" + s
		}
		out = append(out, s)
	}
	return out
}

func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	u := find(objs, "Deployment", "kc-kez-chat-operator")
	if u == nil {
		t.Fatalf("no operator Deployment in %q", kinds(objs))
	}
	d := &appsv1.Deployment{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// appVersion is the chart's appVersion, from Chart.yaml.
func appVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "appVersion:"); ok {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	t.Fatal("Chart.yaml has no appVersion")
	return ""
}

func TestChartLints(t *testing.T) {
	for _, set := range [][]string{
		nil,
		{"rbac.scope=namespace", "rbac.watchNamespaces={team-a,team-b}"},
		{"kezChat.enabled=true", "serviceMonitor.enabled=true", "crds.install=false"},
		{"prometheusRule.enabled=true", "grafanaDashboard.enabled=true"},
	} {
		args := []string{"lint", "--strict", chart}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		if out, err := helm(t, nil, args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// TestChartDefaults: the CRD (kept on uninstall), cluster-wide RBAC and the
// operator, locked down, running the chart's appVersion and handing that
// same image to KezChats.
func TestChartDefaults(t *testing.T) {
	objs := render(t)
	for _, want := range []string{
		"CustomResourceDefinition/kezchats.chat.kez.lat", "CustomResourceDefinition/kezchatbackups.chat.kez.lat",
		"ClusterRole/kc-kez-chat-operator-manager", "ClusterRoleBinding/kc-kez-chat-operator-manager",
		"kez-chat-system/Role/kc-kez-chat-operator-leader-election",
		"kez-chat-system/RoleBinding/kc-kez-chat-operator-leader-election",
		"ClusterRole/kc-kez-chat-operator-kezchat-editor", "ClusterRole/kc-kez-chat-operator-kezchat-viewer",
		"kez-chat-system/ServiceAccount/kc-kez-chat-operator",
		"kez-chat-system/Deployment/kc-kez-chat-operator",
		"kez-chat-system/Service/kc-kez-chat-operator-metrics",
	} {
		if !slices.Contains(kinds(objs), want) {
			t.Errorf("lacks %s; has %q", want, kinds(objs))
		}
	}
	for _, kind := range []string{"ServiceMonitor", "KezChat"} {
		if u := find(objs, kind, ""); u != nil {
			t.Errorf("renders %s %s by default", kind, u.GetName())
		}
	}
	if find(objs, "Role", "kc-kez-chat-operator-manager") != nil {
		t.Error("renders a manager Role as well as the ClusterRole")
	}

	crd := find(objs, "CustomResourceDefinition", "")
	if got := crd.GetAnnotations()["helm.sh/resource-policy"]; got != "keep" {
		t.Errorf("CRD's helm.sh/resource-policy = %q, want keep: uninstall would delete every KezChat", got)
	}

	d := deployment(t, objs)
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	if want := "ghcr.io/kez-lat/kezchat:" + appVersion(t); c.Image != want {
		t.Errorf("image %q, want %q (the tag defaults to the chart's appVersion)", c.Image, want)
	}
	if v, _ := envValue(c, "KEZ_IMAGE"); v != c.Image {
		t.Errorf("KEZ_IMAGE %q is not the operator's image %q: KezChats would run another version", v, c.Image)
	}
	if v, ok := envValue(c, "KEZ_WATCH_NAMESPACES"); !ok || v != "" {
		t.Errorf("KEZ_WATCH_NAMESPACES = %q, %v; want empty (every namespace) with cluster scope", v, ok)
	}
	if v, _ := envValue(c, "KEZ_MAX_CONCURRENT_UPGRADES"); v != "1" {
		t.Errorf("KEZ_MAX_CONCURRENT_UPGRADES = %q, want 1: one KezChat upgrades at a time", v)
	}
	if v, _ := envValue(c, "KEZ_UPGRADE_TIMEOUT"); v != "15m" {
		t.Errorf("KEZ_UPGRADE_TIMEOUT = %q", v)
	}
	if !slices.Contains(c.Args, "--leader-elect") || c.Args[0] != "operator" {
		t.Errorf("args %q", c.Args)
	}
	if pod.ServiceAccountName != "kc-kez-chat-operator" {
		t.Errorf("serviceAccountName %q", pod.ServiceAccountName)
	}

	// Hardened like the chat pods: the restricted Pod Security Standard.
	psc := pod.SecurityContext
	if psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || ptr.Deref(psc.RunAsUser, 0) != 10001 ||
		ptr.Deref(psc.RunAsGroup, 0) != 10001 || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", psc)
	}
	if sc := c.SecurityContext; sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container security context %+v", c.SecurityContext)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "probes" {
		t.Errorf("liveness probe %+v", p)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %+v", p)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != 8080 || ports["probes"] != 8081 {
		t.Errorf("ports %v, want metrics 8080 and probes 8081", ports)
	}
}

// TestChartRulesAreConfigRBAC: the chart grants what config/rbac does, the
// operator's role being generated from the controllers' RBAC markers.
func TestChartRulesAreConfigRBAC(t *testing.T) {
	objs := render(t)
	for _, c := range []struct{ kind, name, file string }{
		{"ClusterRole", "kc-kez-chat-operator-manager", "role.yaml"},
		{"Role", "kc-kez-chat-operator-leader-election", "leader_election_role.yaml"},
		{"ClusterRole", "kc-kez-chat-operator-kezchat-editor", "kezchat_editor_role.yaml"},
		{"ClusterRole", "kc-kez-chat-operator-kezchat-viewer", "kezchat_viewer_role.yaml"},
	} {
		u := find(objs, c.kind, c.name)
		if u == nil {
			t.Errorf("no %s %s", c.kind, c.name)
			continue
		}
		b, err := os.ReadFile(filepath.Join("..", "config", "rbac", c.file))
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		if err := utilyaml.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(u.Object["rules"]); got != fmt.Sprint(want["rules"]) {
			t.Errorf("%s %s rules\n%s\ndiffer from config/rbac/%s\n%s\n(make manifests regenerates the chart's)", c.kind, c.name, got, c.file, fmt.Sprint(want["rules"]))
		}
	}
}

// TestChartNamespaceScope: Roles in each watched namespace instead of a
// ClusterRole, and the operator told to watch just those.
func TestChartNamespaceScope(t *testing.T) {
	t.Run("release namespace", func(t *testing.T) {
		objs := render(t, "rbac.scope=namespace")
		if u := find(objs, "ClusterRole", "kc-kez-chat-operator-manager"); u != nil {
			t.Error("renders the manager ClusterRole with namespace scope")
		}
		if find(objs, "ClusterRoleBinding", "") != nil {
			t.Error("renders a ClusterRoleBinding with namespace scope")
		}
		want := []string{"kez-chat-system/Role/kc-kez-chat-operator-manager", "kez-chat-system/RoleBinding/kc-kez-chat-operator-manager"}
		for _, w := range want {
			if !slices.Contains(kinds(objs), w) {
				t.Errorf("lacks %s; has %q", w, kinds(objs))
			}
		}
		c := deployment(t, objs).Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "KEZ_WATCH_NAMESPACES"); v != "kez-chat-system" {
			t.Errorf("KEZ_WATCH_NAMESPACES = %q, want the release namespace", v)
		}
	})
	t.Run("listed namespaces", func(t *testing.T) {
		objs := render(t, "rbac.scope=namespace", "rbac.watchNamespaces={team-a,team-b}")
		for _, ns := range []string{"team-a", "team-b"} {
			for _, kind := range []string{"Role", "RoleBinding"} {
				if w := ns + "/" + kind + "/kc-kez-chat-operator-manager"; !slices.Contains(kinds(objs), w) {
					t.Errorf("lacks %s; has %q", w, kinds(objs))
				}
			}
		}
		rb := find(objs, "RoleBinding", "kc-kez-chat-operator-manager")
		subjects, _, _ := unstructured.NestedSlice(rb.Object, "subjects")
		if len(subjects) != 1 || subjects[0].(map[string]any)["namespace"] != "kez-chat-system" {
			t.Errorf("RoleBinding subjects %v, want the operator's ServiceAccount in the release namespace", subjects)
		}
		// Leader election stays in the release's namespace.
		if !slices.Contains(kinds(objs), "kez-chat-system/Role/kc-kez-chat-operator-leader-election") {
			t.Errorf("no leader-election Role in the release namespace: %q", kinds(objs))
		}
		c := deployment(t, objs).Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "KEZ_WATCH_NAMESPACES"); v != "team-a,team-b" {
			t.Errorf("KEZ_WATCH_NAMESPACES = %q", v)
		}
	})
}

func TestChartOptions(t *testing.T) {
	t.Run("crds.install=false", func(t *testing.T) {
		objs := render(t, "crds.install=false")
		if find(objs, "CustomResourceDefinition", "") != nil {
			t.Error("renders the CRD with crds.install=false")
		}
	})
	t.Run("image", func(t *testing.T) {
		objs := render(t, "image.repository=registry.example/kezchat", "image.tag=v1.2.3")
		c := deployment(t, objs).Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "KEZ_IMAGE"); c.Image != "registry.example/kezchat:v1.2.3" || v != c.Image {
			t.Errorf("image %q, KEZ_IMAGE %q", c.Image, v)
		}
		digest := "sha256:" + strings.Repeat("ab", 32)
		c = deployment(t, render(t, "image.digest="+digest)).Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "KEZ_IMAGE"); c.Image != "ghcr.io/kez-lat/kezchat@"+digest || v != c.Image {
			t.Errorf("by digest: image %q, KEZ_IMAGE %q", c.Image, v)
		}
	})
	t.Run("upgrade pacing", func(t *testing.T) {
		c := deployment(t, render(t, "operator.maxConcurrentUpgrades=3", "operator.upgradeTimeout=1h30m")).Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "KEZ_MAX_CONCURRENT_UPGRADES"); v != "3" {
			t.Errorf("KEZ_MAX_CONCURRENT_UPGRADES = %q", v)
		}
		if v, _ := envValue(c, "KEZ_UPGRADE_TIMEOUT"); v != "1h30m" {
			t.Errorf("KEZ_UPGRADE_TIMEOUT = %q", v)
		}
	})
	t.Run("platformAssignsUID", func(t *testing.T) {
		for _, assigns := range []bool{false, true} {
			ps := deployment(t, render(t, fmt.Sprintf("platformAssignsUID=%v", assigns))).Spec.Template.Spec
			sc := ps.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("platformAssignsUID=%v: the operator may run as root: %+v", assigns, sc)
			}
			if named := sc.RunAsUser != nil || sc.RunAsGroup != nil; named == assigns {
				t.Errorf("platformAssignsUID=%v: runAsUser %v runAsGroup %v", assigns, sc.RunAsUser, sc.RunAsGroup)
			}
			if v, _ := envValue(ps.Containers[0], "KEZ_PLATFORM_ASSIGNS_UID"); v != fmt.Sprint(assigns) {
				t.Errorf("platformAssignsUID=%v: KEZ_PLATFORM_ASSIGNS_UID=%q, so KezChat pods would not follow", assigns, v)
			}
		}
	})
	t.Run("serviceMonitor", func(t *testing.T) {
		objs := render(t, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
		sm := find(objs, "ServiceMonitor", "kc-kez-chat-operator")
		if sm == nil {
			t.Fatalf("no ServiceMonitor: %q", kinds(objs))
		}
		if sm.GetLabels()["release"] != "prom" {
			t.Errorf("ServiceMonitor labels %v", sm.GetLabels())
		}
		svc := find(objs, "Service", "kc-kez-chat-operator-metrics")
		sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
		for k, v := range sel {
			if svc.GetLabels()[k] != v {
				t.Errorf("ServiceMonitor selects %s=%s; the metrics Service has %v", k, v, svc.GetLabels())
			}
		}
	})
	t.Run("prometheusRule and grafanaDashboard", func(t *testing.T) {
		if objs := render(t); find(objs, "PrometheusRule", "kc-kez-chat-operator-kez-chat") != nil ||
			find(objs, "ConfigMap", "kc-kez-chat-operator-dashboard") != nil {
			t.Errorf("rules or dashboard by default: %q", kinds(objs))
		}
		objs := render(t, "prometheusRule.enabled=true", "prometheusRule.labels.release=prom",
			"grafanaDashboard.enabled=true", "grafanaDashboard.namespace=grafana")
		rule := find(objs, "PrometheusRule", "kc-kez-chat-operator-kez-chat")
		if rule == nil {
			t.Fatalf("no PrometheusRule: %q", kinds(objs))
		}
		var want map[string]any
		if err := yaml.Unmarshal(monitoring.Rules, &want); err != nil {
			t.Fatal(err)
		}
		if spec := rule.Object["spec"]; !reflect.DeepEqual(spec, want) || rule.GetLabels()["release"] != "prom" {
			t.Errorf("PrometheusRule labels %v, spec is monitoring/rules.yaml: %v", rule.GetLabels(), reflect.DeepEqual(spec, want))
		}
		cm := find(objs, "ConfigMap", "kc-kez-chat-operator-dashboard")
		if cm == nil {
			t.Fatalf("no dashboard ConfigMap: %q", kinds(objs))
		}
		data, _, _ := unstructured.NestedString(cm.Object, "data", "kez-chat.json")
		if cm.GetLabels()["grafana_dashboard"] != "1" || cm.GetNamespace() != "grafana" || data != strings.TrimSuffix(string(monitoring.Dashboard), "\n") {
			t.Errorf("dashboard ConfigMap in %s labelled %v; holds monitoring/dashboard.json: %v", cm.GetNamespace(), cm.GetLabels(), data == string(monitoring.Dashboard))
		}
	})
	t.Run("kezChat", func(t *testing.T) {
		objs := render(t, "kezChat.enabled=true", "kezChat.name=team", "kezChat.spec.domain=chat.example.net",
			"kezChat.spec.server.store=jetstream", "kezChat.spec.server.replicas=3")
		kc := find(objs, "KezChat", "team")
		if kc == nil {
			t.Fatalf("no KezChat: %q", kinds(objs))
		}
		if kc.GetAPIVersion() != "chat.kez.lat/v1alpha1" || kc.GetNamespace() != "kez-chat-system" {
			t.Errorf("KezChat %s in %q", kc.GetAPIVersion(), kc.GetNamespace())
		}
		if d, _, _ := unstructured.NestedString(kc.Object, "spec", "domain"); d != "chat.example.net" {
			t.Errorf("domain %q", d)
		}
		if r, _, _ := unstructured.NestedFieldNoCopy(kc.Object, "spec", "server", "replicas"); fmt.Sprint(r) != "3" {
			t.Errorf("server.replicas %v", r)
		}
		a := kc.GetAnnotations()
		if a["helm.sh/hook"] != "post-install" || a["helm.sh/hook-delete-policy"] != "hook-failed" {
			t.Errorf("annotations %v: want a post-install hook that Helm never deletes on its own", a)
		}
	})
}

// TestChartSchemaRefusesBadValues: values.schema.json stops a typo before
// anything reaches the cluster.
func TestChartSchemaRefusesBadValues(t *testing.T) {
	for _, set := range [][]string{
		{"rbac.scope=bogus"},
		{"rbac.watchNamespaces={team-a}"}, // needs rbac.scope=namespace
		{"rbac.scope=namespace", "rbac.watchNamespaces={Not_A_Namespace}"},
		{"crds.install=maybe"},
		{"image.pullPolicy=Sometimes"},
		{"image.digest=latest"},
		{"operator.logLevel=verbose"},
		{"operator.maxConcurrentReconciles=0"},
		{"operator.maxConcurrentUpgrades=-1"},
		{"operator.upgradeTimeout=soon"},
		{"kezChat.enabled=true", "kezChat.spec.domain=Not A Domain"},
		{"kezChat.spec.domain=null"},
		{"kezChat.enabled=true", "kezChat.spec.domain=chat.example.org", "kezChat.name=chat.example"},
		{"kezChat.enabled=true", "kezChat.spec.domain=chat.example.org", "kezChat.name=" + strings.Repeat("c", 48)},
		{"replicaCount=-1"},
		{"typo=true"},
	} {
		args := []string{"template", "kc", chart}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		_, err := helm(t, nil, args...)
		if err == nil {
			t.Errorf("accepts %q", set)
		} else if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
			t.Errorf("refuses %q, but not by the schema: %v", set, err)
		}
	}
}

// Values the schema passes but that would run the operator unsafely are
// refused with a message that says what to set.
func TestChartRefusesUnsafeValues(t *testing.T) {
	for _, tt := range []struct {
		set  []string
		want string
	}{
		{[]string{"replicaCount=2", "operator.leaderElect=false"}, "replicaCount > 1 needs operator.leaderElect=true"},
		{[]string{"serviceAccount.create=false"}, "serviceAccount.create=false needs serviceAccount.name"},
		{[]string{"serviceAccount.create=false", "rbac.scope=namespace"}, "serviceAccount.create=false needs serviceAccount.name"},
	} {
		args := []string{"template", "kc", chart}
		for _, s := range tt.set {
			args = append(args, "--set", s)
		}
		out, err := helm(t, nil, args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want a failure saying %q", tt.set, err, tt.want)
		}
		if strings.Contains(out, "name: default") {
			t.Errorf("%q binds a role to the default ServiceAccount:\n%s", tt.set, out)
		}
	}
	// The safe forms render: one replica without leader election, and a
	// ServiceAccount of the user's, which the roles are bound to.
	render(t, "replicaCount=1", "operator.leaderElect=false")
	objs := render(t, "serviceAccount.create=false", "serviceAccount.name=ops-operator")
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		for _, u := range objs {
			if u.GetKind() != kind {
				continue
			}
			subjects, _, _ := unstructured.NestedSlice(u.Object, "subjects")
			if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != "ops-operator" {
				t.Errorf("%s %s binds %v, want ServiceAccount ops-operator", kind, u.GetName(), subjects)
			}
		}
	}
	if find(objs, "ServiceAccount", "ops-operator") != nil {
		t.Error("serviceAccount.create=false made a ServiceAccount")
	}
}
