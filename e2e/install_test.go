// Package e2e installs kez-chat the ways an admin does (helm install, or
// kubectl apply -k) on a local control plane and follows a KezChat from
// kubectl apply to Ready, through a spec change and a helm upgrade, to its
// deletion.
package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/testutil"
)

const (
	chart        = "../charts/kez-chat-operator"
	release      = "kez-chat-operator"
	releaseNS    = "kez-chat-operator"
	chatNS       = "chat"
	sample       = "../config/samples/chat_v1alpha1_kezchat.yaml"
	sampleName   = "team"
	firstImage   = "registry.example/kezchat:e2e-1"
	secondImage  = "registry.example/kezchat:e2e-2"
	stepTimeout  = 2 * time.Minute
	kubectlLimit = "--timeout=120s"
)

// kezchatBinary is the kezchat binary to run as the operator: $KEZCHAT_BIN
// (make e2e passes the one it built), or one built here.
func kezchatBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("KEZCHAT_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(t.TempDir(), "kezchat")
	build := exec.Command("go", "build", "-o", bin, "../cmd/kezchat")
	// Static, as `make build` makes it: the image has no libc.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("building kezchat: %v\n%s", err, out)
	}
	return bin
}

// runOperator runs `kezchat operator` against the cluster, as a process of
// its own with the cluster's kubeconfig, until t ends. kwok runs no
// containers, so the operator pod the chart deploys only looks alive; this
// process is the one that reconciles.
func (c *cluster) runOperator(t *testing.T, bin string) {
	t.Helper()
	probes := testutil.FreeAddr(t)
	c.start(t, "operator", bin, "operator", "--image="+firstImage, "--leader-elect=false",
		"--metrics-bind=0", "--health-probe-bind="+probes, "--log-format=text")
	// It finds the cluster through KUBECONFIG, which the test sets.
	waitReadyz(t, time.Minute, "the operator is ready", "http://"+probes+"/readyz")
}

// waitReadyz waits until url answers 200 OK.
func waitReadyz(t *testing.T, timeout time.Duration, what, url string) {
	t.Helper()
	waitReadyzVia(t, http.DefaultClient, timeout, what, url)
}

// waitReadyzVia waits until url answers 200 OK to hc.
func waitReadyzVia(t *testing.T, hc *http.Client, timeout time.Duration, what, url string) {
	t.Helper()
	eventually(t, timeout, what, func() error {
		res, err := hc.Get(url)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", res.StatusCode)
		}
		return nil
	})
}

func (c *cluster) kezChat(t *testing.T, ns, name string) *chatv1.KezChat {
	t.Helper()
	var kc chatv1.KezChat
	if err := c.client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &kc); err != nil {
		t.Fatal(err)
	}
	return &kc
}

// waitReady waits until the KezChat is Ready for its current generation.
func (c *cluster) waitReady(t *testing.T, ns, name string) *chatv1.KezChat {
	t.Helper()
	var kc *chatv1.KezChat
	eventually(t, stepTimeout, "KezChat "+name+" Ready", func() error {
		kc = c.kezChat(t, ns, name)
		ready := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionReady)
		if ready == nil || ready.Status != "True" || ready.ObservedGeneration != kc.Generation || kc.Status.ObservedGeneration != kc.Generation {
			return fmt.Errorf("generation %d, status %+v", kc.Generation, kc.Status.Conditions)
		}
		return nil
	})
	return kc
}

// instanceObjects lists, by "Kind/name", what in ns belongs to the instance
// name (by its app.kubernetes.io/instance label).
func (c *cluster) instanceObjects(t *testing.T, ns, name string) []string {
	t.Helper()
	var out []string
	lists := map[string]client.ObjectList{
		"Deployment": &appsv1.DeploymentList{}, "StatefulSet": &appsv1.StatefulSetList{}, "ReplicaSet": &appsv1.ReplicaSetList{},
		"Pod": &corev1.PodList{}, "Service": &corev1.ServiceList{}, "ConfigMap": &corev1.ConfigMapList{},
		"Secret": &corev1.SecretList{}, "PersistentVolumeClaim": &corev1.PersistentVolumeClaimList{},
		"ServiceAccount": &corev1.ServiceAccountList{}, "Ingress": &networkingv1.IngressList{},
		"NetworkPolicy": &networkingv1.NetworkPolicyList{},
	}
	for kind, list := range lists {
		if err := c.client.List(context.Background(), list, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/instance": name}); err != nil {
			t.Fatal(err)
		}
		meta.EachListItem(list, func(o runtime.Object) error {
			out = append(out, kind+"/"+o.(client.Object).GetName())
			return nil
		})
	}
	return out
}

func TestInstallRunUpgradeAndRemove(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()

	// Install with Helm.
	c.run(t, "helm", "lint", chart)
	c.run(t, "helm", "install", release, chart, "--namespace", releaseNS, "--create-namespace",
		"--set", "image.tag=e2e-1", "--wait", "--timeout=2m")
	var crd apiextensionsv1.CustomResourceDefinition
	if err := c.client.Get(ctx, client.ObjectKey{Name: "kezchats.chat.kez.lat"}, &crd); err != nil {
		t.Fatalf("the chart installed no KezChat CRD: %v", err)
	}
	if crd.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("the CRD lacks helm.sh/resource-policy: keep: %v", crd.Annotations)
	}
	var operator appsv1.Deployment
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: releaseNS, Name: release}, &operator); err != nil {
		t.Fatalf("the chart's operator Deployment: %v", err)
	}
	if operator.Status.AvailableReplicas != 1 {
		t.Errorf("the operator Deployment is not available after helm --wait: %+v", operator.Status)
	}

	c.runOperator(t, kezchatBinary(t))

	// A user applies the sample.
	c.run(t, "kubectl", "create", "namespace", chatNS)
	c.run(t, "kubectl", "apply", "--namespace", chatNS, "-f", sample)
	c.run(t, "kubectl", "wait", "--namespace", chatNS, "--for=condition=Ready", "kezchat/"+sampleName, kubectlLimit)
	kc := c.waitReady(t, chatNS, sampleName)

	got := strings.Join(c.instanceObjects(t, chatNS, sampleName), " ")
	for _, want := range []string{
		"Deployment/team-server", "Deployment/team-sig-server", "StatefulSet/team-nats",
		"Service/team-server", "Service/team-sig-server", "Service/team-nats", "Service/team-nats-headless",
		"ConfigMap/team-nats-config", "Secret/team-vapid", "PersistentVolumeClaim/team-server-data",
		"PersistentVolumeClaim/team-sig-server-data", "PersistentVolumeClaim/data-team-nats-0",
		"ServiceAccount/team", "Ingress/team",
		"NetworkPolicy/team-server", "NetworkPolicy/team-nats", "NetworkPolicy/team-sig-server",
	} {
		if !strings.Contains(" "+got+" ", " "+want+" ") {
			t.Errorf("no %s among the instance's objects: %s", want, got)
		}
	}
	// Every pod was scheduled and turned Ready, every volume bound.
	var pods corev1.PodList
	if err := c.client.List(ctx, &pods, client.InNamespace(chatNS)); err != nil {
		t.Fatal(err)
	}
	components := map[string]bool{}
	for _, p := range pods.Items {
		if p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s: node %q phase %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		}
		components[p.Labels["app.kubernetes.io/component"]] = true
	}
	if len(components) != 3 {
		t.Errorf("pods of components %v, want server, nats and sig-server", components)
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := c.client.List(ctx, &pvcs, client.InNamespace(chatNS)); err != nil {
		t.Fatal(err)
	}
	for _, p := range pvcs.Items {
		if p.Status.Phase != corev1.ClaimBound {
			t.Errorf("volume claim %s is %s", p.Name, p.Status.Phase)
		}
	}
	var secret corev1.Secret
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: chatNS, Name: "team-vapid"}, &secret); err != nil {
		t.Fatal(err)
	}
	if kc.Status.URL != "https://chat.example.org" || kc.Status.VAPIDPublicKey == "" || kc.Status.VAPIDPublicKey != string(secret.Data["public-key"]) {
		t.Errorf("status URL %q VAPID key %q; the Secret's key %q", kc.Status.URL, kc.Status.VAPIDPublicKey, secret.Data["public-key"])
	}
	if out := c.run(t, "kubectl", "get", "kezchats", "--namespace", chatNS); !strings.Contains(out, "chat.example.org") || !strings.Contains(out, "True") {
		t.Errorf("kubectl get kezchats:\n%s", out)
	}

	// A spec change rolls the server out to the new image.
	c.run(t, "kubectl", "patch", "--namespace", chatNS, "kezchat/"+sampleName, "--type=merge",
		"-p", fmt.Sprintf(`{"spec":{"image":%q}}`, secondImage))
	c.run(t, "kubectl", "rollout", "status", "--namespace", chatNS, "deployment/team-server", kubectlLimit)
	c.run(t, "kubectl", "rollout", "status", "--namespace", chatNS, "deployment/team-sig-server", kubectlLimit)
	kc = c.waitReady(t, chatNS, sampleName)
	eventually(t, stepTimeout, "only new-image server pods", func() error {
		if err := c.client.List(ctx, &pods, client.InNamespace(chatNS), client.MatchingLabels{"app.kubernetes.io/component": "server"}); err != nil {
			return err
		}
		if len(pods.Items) != 1 || pods.Items[0].Spec.Containers[0].Image != secondImage || pods.Items[0].Status.Phase != corev1.PodRunning {
			var images []string
			for _, p := range pods.Items {
				images = append(images, p.Name+"="+p.Spec.Containers[0].Image+"/"+string(p.Status.Phase))
			}
			return fmt.Errorf("server pods %v", images)
		}
		return nil
	})

	// helm upgrade upgrades the operator, and the chats stay.
	c.run(t, "helm", "upgrade", release, chart, "--namespace", releaseNS, "--reuse-values",
		"--set", "image.tag=e2e-2", "--wait", "--timeout=2m")
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: releaseNS, Name: release}, &operator); err != nil {
		t.Fatal(err)
	}
	if img := operator.Spec.Template.Spec.Containers[0].Image; !strings.HasSuffix(img, ":e2e-2") {
		t.Errorf("operator image after upgrade %s", img)
	}
	c.waitReady(t, chatNS, sampleName)

	// Deleting the KezChat takes every child with it but its data, which
	// deletionPolicy Retain (the default) keeps; deleting that by hand
	// leaves nothing.
	c.run(t, "kubectl", "delete", "--namespace", chatNS, "kezchat/"+sampleName, "--wait=true", kubectlLimit)
	retained := []string{"PersistentVolumeClaim/data-" + sampleName + "-nats-0", "PersistentVolumeClaim/" + sampleName + "-server-data",
		"PersistentVolumeClaim/" + sampleName + "-sig-server-data", "Secret/" + sampleName + "-vapid"}
	eventually(t, stepTimeout, "every child gone but the data", func() error {
		left := c.instanceObjects(t, chatNS, sampleName)
		slices.Sort(left)
		if !slices.Equal(left, retained) {
			return fmt.Errorf("left: %v, want %v", left, retained)
		}
		return nil
	})
	c.run(t, "kubectl", "delete", "--namespace", chatNS, "pvc,secret", "-l",
		"app.kubernetes.io/instance="+sampleName+",app.kubernetes.io/managed-by=kez-chat-operator", "--wait=true", kubectlLimit)
	eventually(t, stepTimeout, "the retained data deleted", func() error {
		if left := c.instanceObjects(t, chatNS, sampleName); len(left) > 0 {
			return fmt.Errorf("left: %v", left)
		}
		return nil
	})

	// helm uninstall leaves the CRD (and so every user's KezChat).
	c.run(t, "helm", "uninstall", release, "--namespace", releaseNS, "--wait", "--timeout=2m")
	if err := c.client.Get(ctx, client.ObjectKey{Name: "kezchats.chat.kez.lat"}, &crd); err != nil {
		t.Errorf("helm uninstall removed the CRD: %v", err)
	}

	// Or install with kustomize, in a fresh namespace.
	c.run(t, "kubectl", "apply", "-k", "../config/default")
	c.run(t, "kubectl", "rollout", "status", "--namespace", "kez-chat-system", "deployment/kez-chat-operator", kubectlLimit)
	c.waitEstablished(t, "kezchats.chat.kez.lat")
	c.run(t, "kubectl", "create", "namespace", "chat-2")
	c.run(t, "kubectl", "apply", "--namespace", "chat-2", "-f", sample)
	c.waitReady(t, "chat-2", sampleName)
}
