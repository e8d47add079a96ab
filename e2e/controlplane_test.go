package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers/testenv"
	"kez.lat/chat/server/testutil"
)

// cluster is a local control plane: envtest's kube-apiserver and etcd,
// kube-controller-manager (Deployments make ReplicaSets and Pods,
// StatefulSets make Pods, volumes bind, owners' deletion cascades),
// kube-scheduler, and kwok standing in for the kubelets of one node, so
// that Pods are scheduled and turn Ready as on a real cluster. Only the
// containers do not run.
type cluster struct {
	kubeconfig string
	bin        string // the cached Kubernetes binaries
	client     client.Client
	logs       string // directory of the components' logs
}

// controllers are what kube-controller-manager runs: what the test needs,
// without those that want service-account signing keys. Node lifecycle
// lifts the not-ready taint a new node is born with once kwok reports it
// Ready (kwok renews the node's lease, so it is never evicted).
var controllers = []string{
	"deployment-controller", "replicaset-controller", "statefulset-controller", "node-lifecycle-controller",
	"garbage-collector-controller", "persistentvolume-binder-controller",
	"persistentvolume-protection-controller", "persistentvolumeclaim-protection-controller",
	"endpointslice-controller", "disruption-controller", "namespace-controller", "job-controller",
}

// startCluster brings the control plane up; it stops when t ends.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	assets, err := testenv.Assets()
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"kube-controller-manager", "kube-scheduler", "kwok", "kubectl"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			t.Fatalf("no %s in %s: run `make k8s-tools`", bin, assets)
		}
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { env.Stop() })
	dir := t.TempDir()
	c := &cluster{kubeconfig: filepath.Join(dir, "kubeconfig"), bin: assets, logs: filepath.Join(dir, "logs")}
	if err := testenv.WriteKubeconfig(env, "e2e-admin", c.kubeconfig); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := chatv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := gatewayv1.Install(scheme); err != nil {
		t.Fatal(err)
	}
	if c.client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}

	c.start(t, "kube-controller-manager", filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+c.kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers="+strings.Join(controllers, ","),
		"--concurrent-deployment-syncs=10", "--concurrent-statefulset-syncs=10",
		// kwok renews the node's lease, but on a busy machine a renewal can
		// come late; past the default 50 s grace the node would turn
		// NotReady and its pods unavailable for a while, failing a rollout
		// wait for a reason no test is about (seen in CI at load 5).
		"--node-monitor-grace-period=10m")
	c.start(t, "kube-scheduler", filepath.Join(assets, "kube-scheduler"),
		"--kubeconfig="+c.kubeconfig, "--leader-elect=false", "--secure-port=0")
	stages, err := filepath.Abs(filepath.Join("testdata", "kwok-stages.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c.start(t, "kwok", filepath.Join(assets, "kwok"),
		"--kubeconfig="+c.kubeconfig, "--config="+stages,
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=10.244.0.1/24", "--node-ip=10.0.0.2")

	c.addNode(t, "kwok-node-0")
	c.addVolumes(t, 16)
	return c
}

// start runs a component until t ends, its output in the logs directory,
// which a failing test prints.
func (c *cluster) start(t *testing.T, name, path string, args ...string) {
	t.Helper()
	c.startEnv(t, name, nil, path, args...)
}

// startEnv runs a component with env added to the test's environment,
// until t ends or stop is called.
func (c *cluster) startEnv(t *testing.T, name string, env []string, path string, args ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	logFile, err := os.Create(filepath.Join(c.logs, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			cmd.Wait()
			logFile.Close()
			if t.Failed() {
				data, _ := os.ReadFile(logFile.Name())
				t.Logf("last of %s's log:\n%s", name, tail(data, 3000))
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// addNode registers a node that kwok manages: it turns Ready, and pods
// bound to it become Running and Ready.
func (c *cluster) addNode(t *testing.T, name string) {
	t.Helper()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("128Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			Labels:      map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
		},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	if err := c.client.Create(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "node "+name+" Ready", func() error {
		if err := c.client.Get(context.Background(), client.ObjectKey{Name: name}, node); err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("conditions %v", node.Status.Conditions)
	})
}

// addVolumes makes persistent volumes for claims to bind to, as a storage
// provisioner would.
func (c *cluster) addVolumes(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pv-%02d", i)},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{
					Path: fmt.Sprintf("/tmp/kez-e2e/pv-%02d", i),
				}},
			},
		}
		if err := c.client.Create(context.Background(), pv); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs a tool (kubectl, helm) against the cluster, failing t unless it
// succeeds, and returns its output.
func (c *cluster) run(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, err := c.try(tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

// try runs a tool against the cluster and returns its output and error.
func (c *cluster) try(tool string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, tool), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig,
		// helm keeps its caches and config out of the user's home.
		"HELM_CACHE_HOME="+filepath.Join(c.logs, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(c.logs, "helm-config"),
		"HELM_DATA_HOME="+filepath.Join(c.logs, "helm-data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// waitEstablished waits until the API server serves the named CRDs.
// Not `kubectl wait --for=condition=Established`: that fails at once,
// instead of waiting, on a CRD that has no conditions yet.
func (c *cluster) waitEstablished(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		eventually(t, 2*time.Minute, "CRD "+name+" Established", func() error {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.client.Get(context.Background(), client.ObjectKey{Name: name}, &crd); err != nil {
				return err
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
			return fmt.Errorf("conditions %+v", crd.Status.Conditions)
		})
	}
}

// eventually waits for cond; see testutil.WaitFor.
var eventually = testutil.WaitFor
