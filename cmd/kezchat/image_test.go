package main

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The image (Dockerfile) is the binary `make build` makes, copied into an
// empty filesystem: these tests build it the same way and check that it
// needs nothing there.

// Values stamped into the test build, as the Dockerfile's build args would.
const (
	stampVersion = "v9.9.9-imagetest"
	stampCommit  = "abc1234"
	stampDate    = "2030-01-02T03:04:05Z"
)

// buildLikeImage runs `make build` as the Dockerfile does into a temporary directory with stamped
// values, and returns the binary's path.
func buildLikeImage(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the whole binary; skipped with -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "kezchat")
	// -o web: whatever web/dist holds is embedded; building the web app is
	// not this test's business (the Dockerfile builds it in a stage of its own).
	cmd := exec.Command("make", "-s", "-C", root, "-o", "web", "build",
		"BIN="+bin, "VERSION="+stampVersion, "COMMIT="+stampCommit, "DATE="+stampDate)
	// Not the jobserver or variables of a make that runs this test.
	cmd.Env = withoutEnv(os.Environ(), "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	return bin
}

func withoutEnv(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// TestImageBinary builds the binary once and checks it as the image runs it.
func TestImageBinary(t *testing.T) {
	bin := buildLikeImage(t)
	t.Run("static", func(t *testing.T) { checkStatic(t, bin) })
	t.Run("runs in an empty root", func(t *testing.T) { checkRunsInEmptyRoot(t, bin, 10001, 10001) })
	// OpenShift's restricted SCC runs a pod as a uid from the namespace's
	// range, in group 0, with no passwd entry.
	t.Run("runs in an empty root as a uid the platform assigns", func(t *testing.T) { checkRunsInEmptyRoot(t, bin, 1000680000, 0) })
}

// checkStatic: the runtime image has no libc and no dynamic loader, so the
// binary must ask for neither.
func checkStatic(t *testing.T, bin string) {
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("has a PT_INTERP program header: it needs a dynamic loader")
		}
		if p.Type == elf.PT_DYNAMIC {
			t.Errorf("has a PT_DYNAMIC program header: it is dynamically linked")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Errorf("needs shared libraries (DT_NEEDED) %v", libs)
	}

	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" {
		t.Errorf("CGO_ENABLED=%q, want 0", settings["CGO_ENABLED"])
	}
	if settings["-trimpath"] != "true" {
		t.Errorf("not built with -trimpath")
	}
	if info.Path != "kez.lat/chat/cmd/kezchat" {
		t.Errorf("main package %q", info.Path)
	}
	for _, m := range info.Deps {
		if m.Path == "github.com/nats-io/nats-server/v2" {
			t.Errorf("links the NATS server module %s %s: only tests and kezchat-bench embed one", m.Path, m.Version)
		}
		if m.Path == "github.com/versity/versitygw" {
			t.Errorf("links the S3 server module %s %s: only the backup tests run one", m.Path, m.Version)
		}
	}
}

// TestTheBinaryLinksNoTestRig: the image runs the operator, the chat
// server and the sig-server. The load generator, the NATS servers and the
// push service it embeds, and the tests' fixtures live in other binaries.
func TestTheBinaryLinksNoTestRig(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "kez.lat/chat/cmd/kezchat").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	banned := map[string]bool{
		"testing":                           true,
		"kez.lat/chat/cmd/kezchat-bench":    true,
		"kez.lat/chat/server/natstest":      true,
		"kez.lat/chat/server/push/pushtest": true,
		"kez.lat/chat/server/testutil":      true,
		"kez.lat/chat/client/clienttest":    true,
		// The S3 server the backup tests run; the S3 client is linked.
		"kez.lat/chat/server/backup/s3test": true,
	}
	n := 0
	for pkg := range strings.Lines(string(out)) {
		pkg = strings.TrimSpace(pkg)
		n++
		if banned[pkg] || strings.HasPrefix(pkg, "github.com/nats-io/nats-server/") || strings.HasPrefix(pkg, "github.com/versity/versitygw") {
			t.Errorf("kezchat links %s", pkg)
		}
	}
	if n < 100 {
		t.Fatalf("go list -deps listed %d packages; the list is not what this test thinks it is", n)
	}
}

// checkRunsInEmptyRoot runs `kezchat version` chrooted into a directory
// that holds only the binary, as uid:gid when the test runs as root, as
// the image does, and checks it prints what was stamped.
func checkRunsInEmptyRoot(t *testing.T, bin string, uid, gid uint32) {
	rootfs := t.TempDir()
	if err := os.Chmod(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "kezchat"), data, 0o755); err != nil {
		t.Fatal(err)
	}

	attr := &syscall.SysProcAttr{Chroot: rootfs}
	if os.Geteuid() == 0 {
		attr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	} else {
		// Unprivileged: chroot inside a user namespace where we are root,
		// where the kernel allows one.
		attr.Cloneflags = syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	cmd := exec.Command("/kezchat", "version")
	cmd.Path = "/kezchat" // resolved inside the chroot, not on the host
	cmd.Dir = "/"
	cmd.Env = []string{}
	cmd.SysProcAttr = attr
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if os.Geteuid() != 0 && !errors.As(err, &exit) {
			t.Skipf("cannot chroot without root here (%v); CI runs as root", err)
		}
		t.Fatalf("kezchat version in an empty root: %v\nstderr: %s", err, stderr.String())
	}
	want := "kezchat " + stampVersion + " (commit " + stampCommit + ", built " + stampDate + ")\n"
	if got := stdout.String(); got != want {
		t.Errorf("kezchat version printed %q, want %q", got, want)
	}
	if stderr.Len() > 0 {
		t.Errorf("stderr: %s", stderr.String())
	}
}

// TestDockerfile: the image is built by the make targets CI runs, with the
// stamped values passed through, and runs as uid 10001 with no shell.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		"RUN --mount=type=cache,target=/root/.npm make web\n",
		`make -o web build BIN=/out/kezchat VERSION="$VERSION" COMMIT="$COMMIT" DATE="$DATE"`,
		"\nFROM scratch\n",
		"\nUSER 10001:10001\n",
		"\nENTRYPOINT [\"/kezchat\"]\n",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "*.pem", "*.db", "web/node_modules/"} {
		if !strings.Contains("\n"+string(ignore), "\n"+want+"\n") {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}
