// Package testenv starts a real kube-apiserver and etcd (envtest) with the
// KezChat CRD installed, for the operator's tests.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// repoRoot is the repository's root, found from this file's place in it.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Assets is the directory with kube-apiserver and etcd: $KUBEBUILDER_ASSETS,
// or the cache `make k8s-tools` builds them into.
func Assets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(repoRoot(), "hack", "tools", "install-k8s-tools.sh"), "--print-dir").Output()
		if err != nil {
			return "", fmt.Errorf("finding the kube-apiserver cache: %w", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("no %s in %s: run `make k8s-tools` (or `make test`, which does) to build it", bin, dir)
		}
	}
	return dir, nil
}

// Option changes the control plane Start runs.
type Option func(*envtest.Environment)

// APIServerFlag runs kube-apiserver with --name=values, in place of
// envtest's own value of that flag, if any: for example
// APIServerFlag("service-cluster-ip-range", "10.96.0.0/16") for more than
// the 256 ClusterIPs of envtest's /24.
func APIServerFlag(name string, values ...string) Option {
	return func(env *envtest.Environment) {
		env.ControlPlane.GetAPIServer().Configure().Set(name, values...)
	}
}

// GatewayAPICRDs are the files of the Gateway API's CRDs (standard
// channel) that the operator's tests install: GatewayClass, Gateway and
// HTTPRoute, from the module sigs.k8s.io/gateway-api that go.mod requires,
// so that the CRDs are those of the Go types the operator builds routes
// with.
func GatewayAPICRDs() ([]string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = repoRoot()
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("finding the module sigs.k8s.io/gateway-api: %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
	var files []string
	for _, kind := range []string{"gatewayclasses", "gateways", "httproutes"} {
		f := filepath.Join(dir, "gateway.networking.k8s.io_"+kind+".yaml")
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("the Gateway API's %s CRD: %w", kind, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// GatewayAPI installs the Gateway API's CRDs (GatewayAPICRDs) beside the
// KezChat's.
func GatewayAPI() (Option, error) {
	files, err := GatewayAPICRDs()
	if err != nil {
		return nil, err
	}
	return func(env *envtest.Environment) {
		env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, files...)
	}, nil
}

// Start runs kube-apiserver and etcd with the CRDs of config/crd/bases
// installed, changed by opts. Stop the returned environment when done.
func Start(opts ...Option) (*envtest.Environment, *rest.Config, error) {
	assets, err := Assets()
	if err != nil {
		return nil, nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	for _, opt := range opts {
		opt(env)
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	return env, cfg, nil
}

// WriteKubeconfig adds to env an administrator (group system:masters)
// named user and writes a kubeconfig for it at path: how a process of its
// own (kubectl, helm, `kezchat operator`) reaches the control plane.
func WriteKubeconfig(env *envtest.Environment, user, path string) error {
	admin, err := env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding user %s: %w", user, err)
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		return fmt.Errorf("a kubeconfig for %s: %w", user, err)
	}
	return os.WriteFile(path, kubeconfig, 0o600)
}
