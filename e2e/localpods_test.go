package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// localPods runs on this machine the containers kwok only pretends to run,
// so a test can chat with the instance the operator built, back it up and
// restore it. A container's command line, environment and mounts come from
// its pod spec as the operator wrote it; the image's entrypoint is the
// kezchat binary under test. Volumes are directories here: a claim's
// directory outlives its pods as a volume does, so a retained claim keeps
// its data for the next KezChat that adopts it. Secrets and ConfigMaps are
// written out as files; Service names resolve to the processes started
// here.
type localPods struct {
	c    *cluster
	bin  string
	root string
	// services maps a Service's "name:port" to the local address serving
	// it.
	services map[string]string
}

func newLocalPods(t *testing.T, c *cluster, bin string) *localPods {
	return &localPods{c: c, bin: bin, root: t.TempDir(), services: map[string]string{}}
}

// claimDir is the directory standing in for the volume of claim in ns.
func (p *localPods) claimDir(ns, claim string) string {
	return filepath.Join(p.root, "claims", ns, claim)
}

// serve records that the Service name:port of ns is answered at addr.
func (p *localPods) serve(name string, port int32, addr string) {
	p.services[fmt.Sprintf("%s:%d", name, port)] = addr
}

// command builds the command line of container ctr of pod spec in ns, with
// extra arguments appended (later flags win over earlier ones).
func (p *localPods) command(t *testing.T, ctx context.Context, ns string, spec *corev1.PodSpec, ctr *corev1.Container, extra ...string) *exec.Cmd {
	t.Helper()
	mounts := map[string]string{} // mount path -> local path
	for _, m := range ctr.VolumeMounts {
		local := p.volumeDir(t, ctx, ns, spec, m.Name)
		if m.SubPath != "" {
			local = filepath.Join(local, m.SubPath)
		}
		mounts[m.MountPath] = local
	}
	rewrite := func(s string) string { return p.rewrite(s, mounts) }
	var args []string
	for _, a := range append(append([]string{}, ctr.Command...), ctr.Args...) {
		args = append(args, rewrite(a))
	}
	if len(ctr.Command) > 0 && (ctr.Command[0] == "/kezchat" || ctr.Command[0] == "kezchat") {
		args = args[1:]
	}
	args = append(args, extra...)
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.root}
	for _, e := range ctr.Env {
		v, ok := p.envValue(t, ctx, ns, e)
		if ok {
			cmd.Env = append(cmd.Env, e.Name+"="+rewrite(v))
		}
	}
	for _, from := range ctr.EnvFrom {
		if from.SecretRef != nil {
			for k, v := range p.secret(t, ctx, ns, from.SecretRef.Name).Data {
				cmd.Env = append(cmd.Env, from.Prefix+k+"="+string(v))
			}
		}
	}
	return cmd
}

// rewrite turns the paths under a mount and the Service addresses in s
// into their local counterparts.
func (p *localPods) rewrite(s string, mounts map[string]string) string {
	// Longest mount path first, so /data/x is not taken for /data.
	paths := make([]string, 0, len(mounts))
	for m := range mounts {
		paths = append(paths, m)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, m := range paths {
		if s == m || strings.HasPrefix(s, m+"/") {
			return mounts[m] + s[len(m):]
		}
		if i := strings.Index(s, "="+m); i >= 0 && (len(s) == i+1+len(m) || s[i+1+len(m)] == '/') {
			return s[:i+1] + mounts[m] + s[i+1+len(m):]
		}
	}
	for svc, addr := range p.services {
		s = strings.ReplaceAll(s, "//"+svc, "//"+addr)
	}
	return s
}

// volumeDir is the local directory of pod volume name: a claim's own
// directory, or Secret and ConfigMap keys written out, or a fresh one.
func (p *localPods) volumeDir(t *testing.T, ctx context.Context, ns string, spec *corev1.PodSpec, name string) string {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name != name {
			continue
		}
		switch {
		case v.PersistentVolumeClaim != nil:
			dir := p.claimDir(ns, v.PersistentVolumeClaim.ClaimName)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			return dir
		case v.Secret != nil:
			dir := t.TempDir()
			data := p.secret(t, ctx, ns, v.Secret.SecretName).Data
			writeKeys(t, dir, data, v.Secret.Items)
			return dir
		case v.ConfigMap != nil:
			var cm corev1.ConfigMap
			if err := p.c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: v.ConfigMap.Name}, &cm); err != nil {
				t.Fatalf("ConfigMap %s of volume %s: %v", v.ConfigMap.Name, name, err)
			}
			data := map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			dir := t.TempDir()
			writeKeys(t, dir, data, v.ConfigMap.Items)
			return dir
		default:
			return t.TempDir()
		}
	}
	t.Fatalf("no volume %s in the pod spec", name)
	return ""
}

func writeKeys(t *testing.T, dir string, data map[string][]byte, items []corev1.KeyToPath) {
	t.Helper()
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		if err := os.WriteFile(filepath.Join(dir, it.Path), data[it.Key], 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func (p *localPods) secret(t *testing.T, ctx context.Context, ns, name string) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	if err := p.c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
		t.Fatalf("Secret %s: %v", name, err)
	}
	return &s
}

// envValue resolves e as the kubelet would; values only a real node has
// (resource limits, the pod's own fields) are left out.
func (p *localPods) envValue(t *testing.T, ctx context.Context, ns string, e corev1.EnvVar) (string, bool) {
	t.Helper()
	switch {
	case e.ValueFrom == nil:
		return e.Value, true
	case e.ValueFrom.SecretKeyRef != nil:
		ref := e.ValueFrom.SecretKeyRef
		v, ok := p.secret(t, ctx, ns, ref.Name).Data[ref.Key]
		return string(v), ok
	default:
		return "", false
	}
}

// run runs container ctr of spec to its end, as a Job's pod or an init
// container, and returns what it printed; a failure fails t.
func (p *localPods) run(t *testing.T, ctx context.Context, ns string, spec *corev1.PodSpec, ctr *corev1.Container, extra ...string) string {
	t.Helper()
	cmd := p.command(t, ctx, ns, spec, ctr, extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("container %s (%v): %v\nstdout: %s\nstderr: %s", ctr.Name, cmd.Args, err, stdout.Bytes(), tail(stderr.Bytes(), 4000))
	}
	return stdout.String()
}

// start runs container ctr of spec, a server, until t ends.
func (p *localPods) start(t *testing.T, ctx context.Context, ns string, spec *corev1.PodSpec, ctr *corev1.Container, extra ...string) {
	t.Helper()
	cmd := p.command(t, ctx, ns, spec, ctr, extra...)
	logs, err := os.Create(filepath.Join(t.TempDir(), ctr.Name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting container %s: %v", ctr.Name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		<-exited
		if t.Failed() {
			out, _ := os.ReadFile(logs.Name())
			t.Logf("container %s:\n%s", ctr.Name, tail(out, 4000))
		}
	})
}
