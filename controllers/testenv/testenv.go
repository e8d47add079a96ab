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
