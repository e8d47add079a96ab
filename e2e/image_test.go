package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kez "kez.lat/chat/client"
)

const imageNS = "chat-image"

// kezchatImage is the OCI image layout to run: $KEZCHAT_IMAGE (make e2e
// passes the one `make image` built), or one built here from bin for this
// machine's architecture, as `make image` builds it.
func kezchatImage(t *testing.T, bin string) string {
	t.Helper()
	if dir := os.Getenv("KEZCHAT_IMAGE"); dir != "" {
		return dir
	}
	dir := filepath.Join(t.TempDir(), "image")
	cmd := exec.Command("go", "run", "../hack/image", "--out", dir,
		"--bin", "linux/"+runtime.GOARCH+"="+bin, "--npm-lock", "../web/package-lock.json")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the image: %v\n%s", err, out)
	}
	return dir
}

// The image runs the pods the operator writes, under runc with their
// security context (uid 10001, read-only root, no capabilities, seccomp
// RuntimeDefault) and their volumes: what no kwok node shows.
func TestTheImageRunsTheOperatorsPodsUnderRunc(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()
	bin := kezchatBinary(t)
	image := kezchatImage(t, bin)
	c.run(t, "kubectl", "apply", "--server-side", "-f", "../config/crd/bases")
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat")
	c.runOperator(t, bin)
	c.run(t, "kubectl", "create", "namespace", imageNS)
	c.apply(t, imageNS, `apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: solo
spec:
  domain: chat.example.org
  nats:
    enabled: false
`)
	c.waitReady(t, imageNS, "solo")

	local := newLocalPods(t, c, bin)
	pods := newRuncPods(t, local, image)
	podSpec := func(name string) *corev1.PodSpec {
		var d appsv1.Deployment
		if err := c.client.Get(ctx, client.ObjectKey{Namespace: imageNS, Name: name}, &d); err != nil {
			t.Fatal(err)
		}
		return &d.Spec.Template.Spec
	}
	server, sig := podSpec("solo-server"), podSpec("solo-sig-server")
	for _, spec := range []*corev1.PodSpec{server, sig} {
		ctr := spec.Containers[0]
		if ctr.SecurityContext == nil || ctr.SecurityContext.ReadOnlyRootFilesystem == nil || !*ctr.SecurityContext.ReadOnlyRootFilesystem {
			t.Fatalf("container %s: the operator's security context lost its read-only root: %+v", ctr.Name, ctr.SecurityContext)
		}
	}

	// `kezchat version` in the image says what the binary says.
	want, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	got := pods.run(t, ctx, pods.prepare(t, ctx, imageNS, server, &server.Containers[0], "version"))
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("kezchat version in the image: %q, the binary: %q", got, want)
	}
	// The operator's help, from the same image.
	if out := pods.run(t, ctx, pods.prepare(t, ctx, imageNS, server, &server.Containers[0], "operator", "--help")); !strings.Contains(out, "-leader-elect") {
		t.Errorf("kezchat operator --help in the image:\n%s", out)
	}

	// The sig-server, then the chat server, whose --sig-server names the
	// sig-server's Service.
	sigURL := startRunc(t, ctx, pods, sig, "solo-sig-server")
	local.serve("solo-sig-server", servicePort(t, ctx, c, imageNS, "solo-sig-server"), strings.TrimPrefix(sigURL, "http://"))
	serverURL := startRunc(t, ctx, pods, server, "solo-server")
	hc := pods.netns.httpClient()
	res, err := hc.Get(serverURL + "/v1/healthz")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/v1/healthz: %v %v", res, err)
	}
	res.Body.Close()

	api := kez.New(serverURL, hc)
	alice, bob := registerOn(t, api, "alice"), registerOn(t, api, "bob")
	keys := kez.New(sigURL, hc)
	doc, err := kez.NewKeyDocument(bob.Signer, nil, []kez.SigningKey{{Alg: bob.Signer.Alg(), Key: bob.Signer.PublicKey(), Label: "primary"}}, bob.EncPublicKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keys.PublishKeys(ctx, doc); err != nil {
		t.Fatalf("publishing bob's key document: %v", err)
	}
	if _, err := api.Send(ctx, alice, "bob", "stored on the volume"); err != nil {
		t.Fatalf("alice to bob: %v", err)
	}

	// The message is on the claim's volume, in files of uid 10001: it
	// outlives the container.
	pods.stopAll(t, "solo-server")
	claim := local.claimDir(imageNS, volumeClaim(t, server, "data"))
	entries, err := os.ReadDir(claim)
	if err != nil || len(entries) == 0 {
		t.Fatalf("the data volume %s after the server stopped: %v, %v", claim, entries, err)
	}
	for _, e := range entries {
		info, err := os.Stat(filepath.Join(claim, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if st := info.Sys().(*syscall.Stat_t); info.Mode().IsRegular() && st.Uid != 10001 {
			t.Errorf("%s on the volume belongs to uid %d, want the container's 10001", e.Name(), st.Uid)
		}
	}
	serverURL = startRunc(t, ctx, pods, server, "solo-server")
	api = kez.New(serverURL, hc)
	page, err := api.Poll(ctx, bob, 0, 100)
	if err != nil || len(page.Messages) != 1 {
		t.Fatalf("bob's inbox after the server restarted: %+v, %v", page, err)
	}
	p, err := api.Decrypt(ctx, bob, page.Messages[0])
	if err != nil || p.Body != "stored on the volume" {
		t.Errorf("bob's message after the restart: %+v, %v", p, err)
	}
}

// startRunc starts the pod's first container (after its init containers)
// under runc and returns its URL once /v1/readyz answers.
func startRunc(t *testing.T, ctx context.Context, pods *runcPods, spec *corev1.PodSpec, name string) string {
	t.Helper()
	for i := range spec.InitContainers {
		pods.run(t, ctx, pods.prepare(t, ctx, imageNS, spec, &spec.InitContainers[i]))
	}
	ctr := &spec.Containers[0]
	var port int32
	for _, p := range ctr.Ports {
		if p.Name == "http" {
			port = p.ContainerPort
		}
	}
	if port == 0 {
		t.Fatalf("container %s has no http port", ctr.Name)
	}
	run := pods.prepare(t, ctx, imageNS, spec, ctr)
	_, stop := pods.start(t, run)
	pods.running[name] = append(pods.running[name], stop)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	hc := pods.netns.httpClient()
	waitReadyzVia(t, hc, time.Minute, name+" ready under runc", url+"/v1/readyz")
	// What the kernel says the server runs with: the pod's uid and
	// groups, no capability, no_new_privs, a seccomp filter, a read-only
	// root.
	status := pods.processStatus(t, run.id)
	for field, want := range map[string]string{
		"Uid": "10001 10001 10001 10001", "Gid": "10001 10001 10001 10001", "Groups": "10001",
		"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2", "root mount": "ro",
	} {
		if status[field] != want {
			t.Errorf("%s runs with %s %q, want %q", name, field, status[field], want)
		}
	}
	return url
}

// volumeClaim is the claim behind pod volume name.
func volumeClaim(t *testing.T, spec *corev1.PodSpec, name string) string {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name && v.PersistentVolumeClaim != nil {
			return v.PersistentVolumeClaim.ClaimName
		}
	}
	t.Fatalf("no claim volume %s in the pod spec", name)
	return ""
}
