package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"kez.lat/chat/controllers/testenv"
)

// The tests share one real kube-apiserver and etcd with the KezChat CRDs
// (envtest); each works in a namespace of its own. There is no kubelet
// and no operator: a test writes the objects and statuses the operator
// and the kubelet would.
var (
	testEnv    *envtest.Environment
	testConfig *rest.Config
	k8s        client.Client
	kubeconfig string // an administrator's kubeconfig, for run()
)

func TestMain(m *testing.M) {
	os.Exit(runWithAPIServer(m))
}

func runWithAPIServer(m *testing.M) int {
	env, cfg, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	testEnv, testConfig = env, cfg
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "kubectl-kezchat-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(env, "admin", kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// testNamespace makes a namespace for t, removed when t ends.
func testNamespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kc-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(context.Background(), ns) })
	return ns.Name
}

// testKube is the plugin's connection to the test API server, in ns.
func testKube(t testing.TB, ns string) *kube {
	t.Helper()
	k, err := newKube(testConfig, ns)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// runPlugin runs the command line args as `kubectl kezchat` would, with
// the test kubeconfig, and returns its exit status and output.
func runPlugin(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "--kubeconfig", kubeconfig)
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustCreate(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// setStatus writes obj's status through the status subresource, as the
// operator (or the kubelet, or the volume controller) would.
func setStatus(t testing.TB, obj client.Object) {
	t.Helper()
	if err := k8s.Status().Update(context.Background(), obj); err != nil {
		t.Fatalf("status of %T %s: %v", obj, obj.GetName(), err)
	}
}
