package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
)

// runcPods runs containers of the operator's pod specs from the kezchat
// image under runc, the OCI runtime a kubelet's containerd drives: the
// image's own root filesystem, the pod's security context turned into
// the runtime spec as the kubelet and containerd turn it (user and
// groups, read-only root, capabilities, no_new_privs, seccomp
// RuntimeDefault, masked /proc paths), its volumes bind-mounted. Every
// container runs in one network namespace the test makes.
type runcPods struct {
	local  *localPods // volumes, Secrets and env, as for local processes
	rootfs string     // the image's files, unpacked once
	config v1.Config  // the image's entrypoint, cmd, env, user
	state  string     // runc's --root
	netns  *netns     // the containers' network
	seq    atomic.Int32
	// running holds the stop functions of the containers started, by
	// the name the test gave them.
	running map[string][]func() error
	// cgroupParent is the cgroup the containers' cgroups go under.
	cgroupParent string
}

func newRuncPods(t *testing.T, local *localPods, image string) *runcPods {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("running the image under runc needs root, as a kubelet does")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatal("runc is not installed (Debian's runc package; .ci/run installs it)")
	}
	p := &runcPods{local: local, rootfs: filepath.Join(t.TempDir(), "rootfs"), state: t.TempDir(), running: map[string][]func() error{}}
	p.config = unpackImage(t, image, p.rootfs)
	// The containers' cgroups go under one parent of this test's, which
	// goes when the test ends (cleanups run last-registered first, so
	// after the containers'): the machine's cgroups are left as they were.
	p.cgroupParent = "kez-e2e-" + filepath.Base(p.state)
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + p.cgroupParent)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil {
				t.Errorf("removing the test's cgroup %s: %v", d, err)
			}
		}
	})

	p.netns = newNetns(t, "kez-e2e")
	return p
}

// unpackImage writes the files of image's manifest for this machine's
// architecture (image is an OCI image layout) to dir and returns its
// config.
func unpackImage(t *testing.T, image, dir string) v1.Config {
	t.Helper()
	lp, err := layout.FromPath(image)
	if err != nil {
		t.Fatalf("reading the image layout %s: %v", image, err)
	}
	index, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	// The layout's index.json lists the platforms' manifests, or the
	// one index that lists them.
	images := index
	top, err := index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Manifests) == 1 && top.Manifests[0].MediaType.IsIndex() {
		if images, err = index.ImageIndex(top.Manifests[0].Digest); err != nil {
			t.Fatal(err)
		}
	}
	im, err := images.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var img v1.Image
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH {
			if img, err = images.Image(d.Digest); err != nil {
				t.Fatal(err)
			}
		}
	}
	if img == nil {
		t.Fatalf("the image has no linux/%s manifest", runtime.GOARCH)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	files := mutate.Extract(img)
	defer files.Close()
	if err := untar(files, dir); err != nil {
		t.Fatalf("unpacking the image: %v", err)
	}
	return cf.Config
}

// untar writes the files of a flattened image (no whiteouts left) under
// dir with their modes and owners.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean("/" + h.Name)
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, os.FileMode(h.Mode).Perm()); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode).Perm())
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: tar entry type %c is not expected in this image", h.Name, h.Typeflag)
		}
		if err := os.Lchown(path, h.Uid, h.Gid); err != nil {
			return err
		}
	}
}

// container is one container of a pod spec, ready for runc.
type container struct {
	id, bundle string
}

// prepare writes the bundle (config.json) of container ctr of pod spec in
// ns; args, when given, replace the container's arguments.
func (p *runcPods) prepare(t *testing.T, ctx context.Context, ns string, spec *corev1.PodSpec, ctr *corev1.Container, args ...string) container {
	t.Helper()
	id := fmt.Sprintf("%s-%d", ctr.Name, p.seq.Add(1))
	bundle := filepath.Join(t.TempDir(), id)
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	rs := p.runtimeSpec(t, ctx, ns, spec, ctr, id, args)
	data, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return container{id: id, bundle: bundle}
}

// runtimeSpec is what the kubelet and containerd make of ctr: the
// process (entrypoint and cmd as Kubernetes overrides them, the image's
// env then the container's), the security context, the volume mounts.
func (p *runcPods) runtimeSpec(t *testing.T, ctx context.Context, ns string, pod *corev1.PodSpec, ctr *corev1.Container, id string, args []string) *specs.Spec {
	t.Helper()
	argv := slices.Clone(p.config.Entrypoint)
	cmd := p.config.Cmd
	if len(ctr.Command) > 0 {
		argv, cmd = slices.Clone(ctr.Command), nil
	}
	if len(ctr.Args) > 0 {
		cmd = ctr.Args
	}
	if args != nil {
		cmd = args
	}
	argv = append(argv, cmd...)
	for i, a := range argv {
		argv[i] = p.rewriteServices(a)
	}
	env := append([]string{"HOSTNAME=" + id}, p.config.Env...)
	for _, e := range ctr.Env {
		if v, ok := p.local.envValue(t, ctx, ns, e); ok {
			env = append(env, e.Name+"="+p.rewriteServices(v))
		}
	}

	user := p.user(t, pod, ctr)
	sc := ctr.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	caps := defaultCapabilities(sc.Capabilities)
	rs := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: p.rootfs, Readonly: sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		Process: &specs.Process{
			Args: argv, Env: env, Cwd: "/", User: user,
			Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			// The kubelet asks for no_new_privs unless privilege
			// escalation is allowed (it is by default).
			NoNewPrivileges: sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		},
		Hostname: id,
		Mounts:   p.mounts(t, ctx, ns, pod, ctr),
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: p.netns.path},
			},
			CgroupsPath: "/" + p.cgroupParent + "/" + id,
			Resources:   resources(ctr),
			// containerd's defaults for a container that is not
			// privileged.
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/scsi"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	profile := sc.SeccompProfile
	if profile == nil && pod.SecurityContext != nil {
		profile = pod.SecurityContext.SeccompProfile
	}
	if profile != nil && profile.Type == corev1.SeccompProfileTypeRuntimeDefault {
		sec, err := seccomp.GetDefaultProfile(rs)
		if err != nil {
			t.Fatalf("the default seccomp profile: %v", err)
		}
		rs.Linux.Seccomp = sec
	}
	return rs
}

// user is the uid, gid and supplementary groups the container runs as:
// the container's security context over the pod's, over the image's
// USER; the pod's fsGroup and supplemental groups join.
func (p *runcPods) user(t *testing.T, pod *corev1.PodSpec, ctr *corev1.Container) specs.User {
	t.Helper()
	var u specs.User
	if p.config.User != "" {
		uid, gid, _ := strings.Cut(p.config.User, ":")
		fmt.Sscan(uid, &u.UID)
		fmt.Sscan(gid, &u.GID)
	}
	set := func(uid, gid *int64) {
		if uid != nil {
			u.UID = uint32(*uid)
		}
		if gid != nil {
			u.GID = uint32(*gid)
		}
	}
	var nonRoot *bool
	if psc := pod.SecurityContext; psc != nil {
		set(psc.RunAsUser, psc.RunAsGroup)
		nonRoot = psc.RunAsNonRoot
		if psc.FSGroup != nil {
			u.AdditionalGids = append(u.AdditionalGids, uint32(*psc.FSGroup))
		}
		for _, g := range psc.SupplementalGroups {
			u.AdditionalGids = append(u.AdditionalGids, uint32(g))
		}
	}
	if csc := ctr.SecurityContext; csc != nil {
		set(csc.RunAsUser, csc.RunAsGroup)
		if csc.RunAsNonRoot != nil {
			nonRoot = csc.RunAsNonRoot
		}
	}
	// The kubelet refuses to start a container that must not run as
	// root but would.
	if nonRoot != nil && *nonRoot && u.UID == 0 {
		t.Fatalf("container %s: runAsNonRoot, but it would run as uid 0", ctr.Name)
	}
	return u
}

// defaultCapabilities is containerd's default set with the security
// context's drops and adds applied.
func defaultCapabilities(c *corev1.Capabilities) []string {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
		"CAP_KILL", "CAP_AUDIT_WRITE"}
	if c == nil {
		return caps
	}
	for _, d := range c.Drop {
		if d == "ALL" {
			caps = nil
			break
		}
		caps = slices.DeleteFunc(caps, func(s string) bool { return s == "CAP_"+string(d) })
	}
	for _, a := range c.Add {
		caps = append(caps, "CAP_"+string(a))
	}
	return caps
}

// resources are the container's limits as cgroup settings.
func resources(ctr *corev1.Container) *specs.LinuxResources {
	r := &specs.LinuxResources{}
	if m, ok := ctr.Resources.Limits[corev1.ResourceMemory]; ok {
		r.Memory = &specs.LinuxMemory{Limit: ptrTo(m.Value())}
	}
	if c, ok := ctr.Resources.Limits[corev1.ResourceCPU]; ok {
		period := uint64(100000)
		r.CPU = &specs.LinuxCPU{Period: &period, Quota: ptrTo(c.MilliValue() * 100)}
	}
	return r
}

func ptrTo[T any](v T) *T { return &v }

// mounts are a container's standard file systems and its volumes; a
// volume the kubelet manages ownership of (a claim, an emptyDir) belongs
// to the pod's fsGroup, setgid, as the kubelet leaves it.
func (p *runcPods) mounts(t *testing.T, ctx context.Context, ns string, pod *corev1.PodSpec, ctr *corev1.Container) []specs.Mount {
	t.Helper()
	ms := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	}
	var fsGroup *int64
	if pod.SecurityContext != nil {
		fsGroup = pod.SecurityContext.FSGroup
	}
	for _, m := range ctr.VolumeMounts {
		dir := p.local.volumeDir(t, ctx, ns, pod, m.Name)
		if fsGroup != nil && ownedByFSGroup(pod, m.Name) {
			if err := chownTree(dir, int(*fsGroup)); err != nil {
				t.Fatalf("volume %s: %v", m.Name, err)
			}
		} else if err := setKeyModes(dir, pod, m.Name, fsGroup); err != nil {
			t.Fatalf("volume %s: %v", m.Name, err)
		}
		src := dir
		if m.SubPath != "" {
			src = filepath.Join(dir, m.SubPath)
		}
		opts := []string{"rbind", "rprivate"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		ms = append(ms, specs.Mount{Destination: m.MountPath, Type: "bind", Source: src, Options: opts})
	}
	return ms
}

// ownedByFSGroup says whether the kubelet hands volume name to the pod's
// fsGroup: claims and emptyDirs do, Secrets and ConfigMaps are written
// with their own modes.
func ownedByFSGroup(pod *corev1.PodSpec, name string) bool {
	for _, v := range pod.Volumes {
		if v.Name == name {
			return v.PersistentVolumeClaim != nil || v.EmptyDir != nil
		}
	}
	return false
}

// setKeyModes gives a Secret's or ConfigMap's files the volume's
// defaultMode (0644 when unset) and the pod's fsGroup, as the kubelet
// writes them.
func setKeyModes(dir string, pod *corev1.PodSpec, name string, fsGroup *int64) error {
	mode := int32(0o644)
	for _, v := range pod.Volumes {
		switch {
		case v.Name != name:
		case v.Secret != nil && v.Secret.DefaultMode != nil:
			mode = *v.Secret.DefaultMode
		case v.ConfigMap != nil && v.ConfigMap.DefaultMode != nil:
			mode = *v.ConfigMap.DefaultMode
		}
	}
	return filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fsGroup != nil {
			if err := os.Lchown(path, 0, int(*fsGroup)); err != nil {
				return err
			}
		}
		if info.IsDir() {
			return os.Chmod(path, 0o755)
		}
		return os.Chmod(path, os.FileMode(mode))
	})
}

func chownTree(dir string, gid int) error {
	return filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		if info.IsDir() {
			return os.Chmod(path, info.Mode().Perm()|0o070|os.ModeSetgid)
		}
		return os.Chmod(path, info.Mode().Perm()|0o060)
	})
}

// rewriteServices points a Service URL at the container serving it in
// the shared network namespace.
func (p *runcPods) rewriteServices(s string) string {
	for svc, addr := range p.local.services {
		s = strings.ReplaceAll(s, "//"+svc, "//"+addr)
	}
	return s
}

// run runs c to its end and returns its output; it fails t unless the
// container exits 0.
func (p *runcPods) run(t *testing.T, ctx context.Context, c container) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "runc", "--root", p.state, "run", "--bundle", c.bundle, c.id)
	out, err := cmd.CombinedOutput()
	exec.Command("runc", "--root", p.state, "delete", "--force", c.id).Run()
	if err != nil {
		t.Fatalf("runc run %s: %v\n%s", c.id, err, tail(out, 4000))
	}
	return string(out)
}

// start runs c, a server, until stop is called or t ends; stop returns
// once the container has exited, with its exit error.
func (p *runcPods) start(t *testing.T, c container) (logs string, stop func() error) {
	t.Helper()
	logs = filepath.Join(t.TempDir(), c.id+".log")
	f, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("runc", "--root", p.state, "run", "--bundle", c.bundle, c.id)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("runc run %s: %v", c.id, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); f.Close() }()
	var stopped error
	done := false
	stop = func() error {
		if done {
			return stopped
		}
		done = true
		exec.Command("runc", "--root", p.state, "kill", c.id, "TERM").Run()
		select {
		case stopped = <-exited:
		case <-time.After(30 * time.Second):
			exec.Command("runc", "--root", p.state, "kill", c.id, "KILL").Run()
			stopped = fmt.Errorf("container %s did not stop within 30s of SIGTERM: %v", c.id, <-exited)
		}
		exec.Command("runc", "--root", p.state, "delete", "--force", c.id).Run()
		return stopped
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			out, _ := os.ReadFile(logs)
			t.Logf("container %s:\n%s", c.id, tail(out, 4000))
		}
	})
	return logs, stop
}

// stopAll stops the containers started under name and fails t if one did
// not exit cleanly on SIGTERM, as a kubelet's stop asks.
func (p *runcPods) stopAll(t *testing.T, name string) {
	t.Helper()
	for _, stop := range p.running[name] {
		if err := stop(); err != nil {
			t.Errorf("stopping %s: %v", name, err)
		}
	}
	delete(p.running, name)
}

// processStatus is /proc/<pid>/status of container id's process, by
// field: what the kernel says it runs with.
func (p *runcPods) processStatus(t *testing.T, id string) map[string]string {
	t.Helper()
	out, err := exec.Command("runc", "--root", p.state, "state", id).Output()
	if err != nil {
		t.Fatalf("runc state %s: %v", id, err)
	}
	var state struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(out, &state); err != nil || state.Pid == 0 {
		t.Fatalf("runc state %s: %s, %v", id, out, err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", state.Pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	// And the options its root is mounted with, from its own mountinfo
	// (mount point is field 5, per-mount options field 6).
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", state.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
			fields["root mount"] = strings.Split(f[5], ",")[0]
		}
	}
	return fields
}
