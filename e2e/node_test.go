package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kez "kez.lat/chat/client"
)

const (
	realNode        = "real-node-0"
	realNodeIP      = "10.99.0.1"
	realNodeStorage = "real-node-local"
	nodeNS          = "chat-node"
)

// node is a real Kubernetes node on this machine, joined to the local
// control plane beside kwok's: a kubelet built from the pinned
// Kubernetes module, containerd built from its module, Debian's runc and
// CNI plugins. It runs in a network namespace of its own (its pods' bridge
// lives there too), under a cgroup parent of its own; the API server and
// the registry are forwarded into it. Nothing of the machine's own
// network or cgroups changes, and it all goes when the test ends.
type node struct {
	net  *netns
	root string // kubelet's and containerd's directories
}

func startNode(t *testing.T, c *cluster, reg string) *node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("a real node needs root")
	}
	for _, bin := range []string{"runc", "nsenter", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (Debian's runc, util-linux and containernetworking-plugins; .ci/run installs them)", bin)
		}
	}
	for _, bin := range []string{"kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(c.bin, bin)); err != nil {
			t.Fatalf("no %s in %s: run `make k8s-tools`", bin, c.bin)
		}
	}
	n := &node{net: newNetns(t, "kez-node"), root: t.TempDir()}
	// The node's own address, on a veth pair whose both ends stay in its
	// namespace: the kubelet serves and reports it.
	n.net.ip(t, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
	n.net.ip(t, "addr", "add", realNodeIP+"/24", "dev", "node0")
	n.net.ip(t, "link", "set", "node0", "up")
	n.net.ip(t, "link", "set", "node1", "up")
	n.net.ip(t, "route", "add", "default", "dev", "node0")

	server := c.apiServerAddr(t)
	n.net.forwardIn(t, server)
	n.net.forwardIn(t, reg)
	pause := pushPause(t, reg)

	// Cleanups run last-registered first: this one runs after kubelet and
	// containerd have stopped. It ends what they leave behind: containers
	// and their shims, mounts (the kubelet's root, Secret tmpfs, sandbox
	// network namespaces), the cgroups.
	cgroupRoot := fmt.Sprintf("kez-e2e-node-%d-%s", os.Getpid(), filepath.Base(n.root))
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		if err := os.Mkdir(filepath.Join(h, cgroupRoot), 0o755); err != nil && !os.IsExist(err) {
			t.Fatalf("the node's cgroup parent: %v", err)
		}
	}
	t.Cleanup(func() { n.teardown(t, cgroupRoot) })

	dirs := map[string]string{"cni": "", "certs.d/" + reg: "", "kubelet": "", "logs": "", "runc": ""}
	for d := range dirs {
		if err := os.MkdirAll(filepath.Join(n.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		// The registry answers plain HTTP on loopback.
		"certs.d/" + reg + "/hosts.toml": fmt.Sprintf("server = \"http://%[1]s\"\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", reg),
		"cni/10-kez.conflist": `{
  "cniVersion": "1.0.0", "name": "kez-node",
  "plugins": [
    {"type": "bridge", "bridge": "kez0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`,
		"containerd.toml": fmt.Sprintf(`version = 3
root = "%[1]s/containerd-root"
state = "%[1]s/containerd-state"
[grpc]
  address = "%[1]s/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "%[2]s"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "%[1]s/certs.d"
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/%[3]s"
    snapshotter = "native"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # The kubelet asks for negative OOM scores (-998 for a pod's sandbox),
  # which this machine refuses even to root: keep them at containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      Root = "%[1]s/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "%[1]s/cni"
`, n.root, pause, runtime.GOARCH),
		// cgroup v1 here: the kubelet must be told it may run on it.
		// Swap, disk pressure and node allocatable are the machine's
		// business, not the test's.
		// Services by iptables in the node's namespace. Conntrack limits
		// are the machine's (maxPerCore 0 leaves them), and NodePorts
		// stay off loopback (no route_localnet sysctl).
		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
mode: iptables
hostnameOverride: %[2]s
clusterCIDR: 10.88.0.0/24
bindAddress: %[3]s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.kubeconfig, realNode, realNodeIP),
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /%[2]s
containerRuntimeEndpoint: unix://%[1]s/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
address: %[3]s
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
podLogsDir: %[1]s/logs
`, n.root, cgroupRoot, realNodeIP),
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(n.root, f), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// containerd finds its shim, and the shim runc, on PATH.
	path := []string{"PATH=" + c.bin + ":" + os.Getenv("PATH")}
	c.startEnv(t, "containerd", path, "nsenter", "--net="+n.net.path, "--",
		filepath.Join(c.bin, "containerd"), "--config", filepath.Join(n.root, "containerd.toml"))
	eventually(t, time.Minute, "containerd's socket", func() error {
		_, err := os.Stat(filepath.Join(n.root, "containerd.sock"))
		return err
	})
	c.startEnv(t, "kubelet", path, "nsenter", "--net="+n.net.path, "--",
		filepath.Join(c.bin, "kubelet"), "--config", filepath.Join(n.root, "kubelet.yaml"),
		"--kubeconfig", c.kubeconfig, "--root-dir", filepath.Join(n.root, "kubelet"),
		"--hostname-override", realNode, "--node-ip", realNodeIP, "--node-labels", "type=real")
	c.startEnv(t, "kube-proxy", path, "nsenter", "--net="+n.net.path, "--",
		filepath.Join(c.bin, "kube-proxy"), "--config", filepath.Join(n.root, "kube-proxy.yaml"))
	eventually(t, 2*time.Minute, "node "+realNode+" Ready", func() error {
		var nd corev1.Node
		if err := c.client.Get(context.Background(), client.ObjectKey{Name: realNode}, &nd); err != nil {
			return err
		}
		for _, cond := range nd.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("conditions %v", nd.Status.Conditions)
	})
	return n
}

// teardown ends what the node's processes leave once they stopped.
func (n *node) teardown(t *testing.T, cgroupRoot string) {
	// The shim keeps each containerd namespace's containers in a runc
	// root of its own; the kubelet's are in k8s.io.
	runcRoot := filepath.Join(n.root, "runc", "k8s.io")
	if out, err := exec.Command("runc", "--root", runcRoot, "list", "-q").Output(); err == nil {
		for _, id := range strings.Fields(string(out)) {
			exec.Command("runc", "--root", runcRoot, "kill", id, "KILL").Run()
			exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
		}
	}
	// Shims outlive containerd by design; these are the node's.
	exec.Command("pkill", "-KILL", "-f", "containerd-shim-runc-v2 .*"+regexpQuote(filepath.Join(n.root, "containerd.sock"))).Run()
	for _, m := range mountsUnder(n.root) {
		if err := exec.Command("umount", "-l", m).Run(); err != nil {
			t.Logf("unmounting %s: %v", m, err)
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupRoot)
	for _, cg := range cgroups {
		// Deepest first: a cgroup goes only once its children have.
		var dirs []string
		filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil {
				t.Errorf("removing the node's cgroup %s: %v", d, err)
			}
		}
	}
}

// apiServerAddr is the host:port the cluster's kubeconfig points at.
func (c *cluster) apiServerAddr(t *testing.T) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.Clusters {
		return strings.TrimPrefix(cl.Server, "https://")
	}
	t.Fatal("no cluster in the kubeconfig")
	return ""
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteRune('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

// addLocalVolumes makes n local persistent volumes on the node, in the
// storage class realNodeStorage, as a local-volume provisioner would.
func (n *node) addLocalVolumes(t *testing.T, c *cluster, count int) {
	t.Helper()
	for i := range count {
		dir := filepath.Join(n.root, "volumes", fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("real-node-pv-%d", i)},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				StorageClassName:              realNodeStorage,
				PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{realNode}}},
				}}}},
			},
		}
		if err := c.client.Create(context.Background(), pv); err != nil {
			t.Fatal(err)
		}
	}
}

// pushPause builds the pause image of the node's pod sandboxes
// (testdata/pause, a static binary that waits) and pushes it to reg.
func pushPause(t *testing.T, reg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pause: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar.Bytes())), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/pause"}
	cf.Config.User = "65535:65535"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(reg+"/pause:e2e", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("pushing the pause image: %v", err)
	}
	return ref.String()
}

// pushImage pushes the image layout's index to reg as kez-lat/kezchat:tag.
func pushImage(t *testing.T, ctx context.Context, reg, image, tag string) name.Tag {
	t.Helper()
	lp, err := layout.FromPath(image)
	if err != nil {
		t.Fatal(err)
	}
	index, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(reg+"/kez-lat/kezchat:"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, index, remote.WithContext(ctx)); err != nil {
		t.Fatalf("pushing the image to %s: %v", ref, err)
	}
	return ref
}

// A real node runs a KezChat's chat server from the image in the
// registry: the kubelet pulls it through containerd, runs it under runc
// with the pod's security context, probes it, and the KezChat turns Ready
// because the server answers; people then chat with it through its
// Service, which kube-proxy's rules on the node carry to the pod.
func TestARealNodeRunsAKezChatFromTheRegistry(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()
	bin := kezchatBinary(t)
	reg := startRegistry(t, c)
	ref := pushImage(t, ctx, reg, kezchatImage(t, bin), "v0.0.0-node")
	n := startNode(t, c, reg)
	n.addLocalVolumes(t, c, 2)

	c.run(t, "kubectl", "apply", "--server-side", "-f", "../config/crd/bases")
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat")
	c.runOperator(t, bin)
	c.run(t, "kubectl", "create", "namespace", nodeNS)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.try("kubectl", "describe", "pods", "--namespace", nodeNS)
			t.Logf("pods on the real node:\n%s", tail([]byte(out), 6000))
		}
	})
	c.apply(t, nodeNS, fmt.Sprintf(`apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: real
spec:
  domain: chat.example.org
  image: %s
  nats:
    enabled: false
  sigServer:
    enabled: false
  server:
    nodeSelector:
      kubernetes.io/hostname: %s
    storage:
      storageClassName: %s
`, ref, realNode, realNodeStorage))
	c.waitReady(t, nodeNS, "real")

	var pods corev1.PodList
	if err := c.client.List(ctx, &pods, client.InNamespace(nodeNS), client.MatchingLabels{"app.kubernetes.io/component": "server"}); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 {
		t.Fatalf("%d server pods", len(pods.Items))
	}
	pod := pods.Items[0]
	if pod.Spec.NodeName != realNode || len(pod.Status.ContainerStatuses) != 1 || !pod.Status.ContainerStatuses[0].Ready {
		t.Fatalf("server pod on %q, statuses %+v", pod.Spec.NodeName, pod.Status.ContainerStatuses)
	}
	st := pod.Status.ContainerStatuses[0]
	// What ran is what the registry holds: containerd names the pulled
	// image by the digest of the index it resolved the tag to.
	index, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	digest, err := index.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if want := ref.Context().String() + "@" + digest.String(); st.ImageID != want {
		t.Errorf("the container ran image %q (%s), want %s", st.ImageID, st.Image, want)
	}
	if st.State.Running == nil || st.RestartCount != 0 {
		t.Errorf("the server container: %+v, %d restarts", st.State, st.RestartCount)
	}

	// Through the server's Service, as a client on the cluster's network
	// reaches it: kube-proxy's rules take the ClusterIP to the pod.
	var svc corev1.Service
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: nodeNS, Name: "real-server"}, &svc); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:%d", svc.Spec.ClusterIP, servicePort(t, ctx, c, nodeNS, "real-server"))
	hc := n.net.httpClient()
	waitReadyzVia(t, hc, time.Minute, "the server through its Service", url+"/v1/readyz")
	api := kez.New(url, hc)
	alice, bob := registerOn(t, api, "alice"), registerOn(t, api, "bob")
	stream, err := api.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatalf("bob's stream: %v", err)
	}
	defer stream.Close()
	if _, err := api.Send(ctx, alice, "bob", "through a real node"); err != nil {
		t.Fatalf("alice to bob: %v", err)
	}
	env, err := stream.Next()
	if err != nil {
		t.Fatalf("bob's stream: %v", err)
	}
	p, err := api.Decrypt(ctx, bob, env)
	if err != nil || p.Body != "through a real node" {
		t.Errorf("streamed to bob: %+v, %v", p, err)
	}
	page, err := api.Poll(ctx, bob, 0, 10)
	if err != nil || len(page.Messages) != 1 {
		t.Errorf("bob's stored messages: %+v, %v", page, err)
	}
}
