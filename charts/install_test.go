package charts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"kez.lat/chat/controllers/testenv"
)

// TestChartInstallUpgradeUninstall installs the chart on a real
// kube-apiserver without the CRD, with a first KezChat, then upgrades,
// uninstalls and installs it again: the CRD comes with the chart, the
// KezChat is created once and never replaced, and uninstalling leaves both.
// (No kubelet runs here; make e2e runs the operator itself.)
func TestChartInstallUpgradeUninstall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver and etcd; skipped with -short")
	}
	assets, err := testenv.Assets()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	admin, err := env.ControlPlane.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	kenv := []string{"KUBECONFIG=" + kubeconfig}
	kubectl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(toolsDir(t), "kubectl"), args...)
		cmd.Env = append(os.Environ(), kenv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	helmOK := func(args ...string) {
		t.Helper()
		if out, err := helm(t, kenv, args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	const ns = "kez-chat-system"
	// --wait, as the README says to with kezChat.enabled: Helm then sees
	// the CRD it created Established before it builds the first KezChat
	// (without it, a slow API server fails the hook: "no matches for kind
	// KezChat").
	install := []string{"install", "kc", chart, "-n", ns, "--create-namespace", "--wait", "--timeout=2m",
		"--set", "kezChat.enabled=true", "--set", "kezChat.name=team", "--set", "kezChat.spec.domain=chat.example.org"}

	// envtest runs no deployment controller: the test reports the
	// operator's Deployment rolled out, as that controller would, so that
	// --wait ends.
	installWaiting := func() {
		t.Helper()
		rolledOut := make(chan struct{})
		go func() {
			defer close(rolledOut)
			status := `{"status":{"observedGeneration":1,"replicas":1,"updatedReplicas":1,"readyReplicas":1,"availableReplicas":1,` +
				`"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"},` +
				`{"type":"Progressing","status":"True","reason":"NewReplicaSetAvailable"}]}}`
			for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				cmd := exec.Command(filepath.Join(toolsDir(t), "kubectl"), "-n", ns, "patch", "deployment", "kc-kez-chat-operator",
					"--subresource=status", "--type=merge", "-p", status)
				cmd.Env = append(os.Environ(), kenv...)
				if cmd.Run() == nil {
					return
				}
			}
		}()
		helmOK(install...)
		<-rolledOut
	}
	installWaiting()
	if got := kubectl("get", "crd", "kezchats.chat.kez.lat", "-o", "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}"); got != "keep" {
		t.Errorf("CRD resource-policy %q", got)
	}
	uid := kubectl("-n", ns, "get", "kezchat", "team", "-o", "jsonpath={.metadata.uid}")
	if got := kubectl("-n", ns, "get", "kezchat", "team", "-o", "jsonpath={.spec.domain}"); got != "chat.example.org" {
		t.Errorf("KezChat domain %q", got)
	}
	image := kubectl("-n", ns, "get", "deployment", "kc-kez-chat-operator", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
	if want := "ghcr.io/kez-lat/kezchat:" + appVersion(t); image != want {
		t.Errorf("operator image %q, want %q", image, want)
	}

	// An upgrade changes the operator and leaves the KezChat alone.
	helmOK("upgrade", "kc", chart, "-n", ns, "--set", "image.tag=v9.9.9",
		"--set", "kezChat.enabled=true", "--set", "kezChat.name=team", "--set", "kezChat.spec.domain=other.example.org")
	if got := kubectl("-n", ns, "get", "deployment", "kc-kez-chat-operator", "-o",
		`jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[?(@.name=="KEZ_IMAGE")].value}`); got != "ghcr.io/kez-lat/kezchat:v9.9.9 ghcr.io/kez-lat/kezchat:v9.9.9" {
		t.Errorf("after upgrade: image and KEZ_IMAGE %q", got)
	}
	if got := kubectl("-n", ns, "get", "kezchat", "team", "-o", "jsonpath={.metadata.uid} {.spec.domain}"); got != uid+" chat.example.org" {
		t.Errorf("after upgrade: KezChat %q, want %q unchanged", got, uid+" chat.example.org")
	}

	// Uninstalling leaves the CRD and the KezChat.
	helmOK("uninstall", "kc", "-n", ns)
	if got := kubectl("get", "deployments", "-n", ns, "-o", "name"); got != "" {
		t.Errorf("after uninstall: %s", got)
	}
	if got := kubectl("-n", ns, "get", "kezchat", "team", "-o", "jsonpath={.metadata.uid}"); got != uid {
		t.Errorf("after uninstall: KezChat uid %q, want %q", got, uid)
	}

	// Installing again adopts the kept CRD and keeps the KezChat.
	installWaiting()
	if got := kubectl("-n", ns, "get", "kezchat", "team", "-o", "jsonpath={.metadata.uid}"); got != uid {
		t.Errorf("after reinstall: KezChat uid %q, want %q (replaced)", got, uid)
	}
}
