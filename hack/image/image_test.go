package main

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// dockerfileImage is what the Dockerfile says the image holds.
type dockerfileImage struct {
	user             string
	entrypoint, cmd  []string
	labels           map[string]string // the fixed ones; version and revision are build args
	files            map[string]string // path -> content, for the files the build stage writes
	copiedCACerts    string            // where the CA bundle is copied to
	binary           string            // where the binary is copied to
	fromScratchFound bool
}

// readDockerfile parses what the image tests compare: the last stage's
// USER, ENTRYPOINT, CMD, LABELs and COPYs, and the files the build stage
// writes into the runtime's filesystem.
func readDockerfile(t *testing.T) dockerfileImage {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	var cont string
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cont += s + " "
			continue
		}
		lines = append(lines, cont+l)
		cont = ""
	}
	d := dockerfileImage{labels: map[string]string{}, files: map[string]string{}}
	echo := regexp.MustCompile(`echo '([^']*)' *>/rootfs(/\S+)`)
	cp := regexp.MustCompile(`cp (/\S+) /rootfs(/\S+)`)
	label := regexp.MustCompile(`(org\.opencontainers\.image\.\w+)="([^"$]*)"`)
	for _, l := range lines {
		for _, m := range echo.FindAllStringSubmatch(l, -1) {
			d.files[m[2]] = m[1] + "\n"
		}
		for _, m := range cp.FindAllStringSubmatch(l, -1) {
			d.copiedCACerts = strings.TrimSuffix(m[2], "/") + "/" + filepath.Base(m[1])
		}
		if l == "FROM scratch" {
			d.fromScratchFound = true
		}
		if !d.fromScratchFound {
			continue
		}
		word, rest, _ := strings.Cut(l, " ")
		switch word {
		case "USER":
			d.user = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: %v", rest, err)
			}
		case "CMD":
			if err := json.Unmarshal([]byte(rest), &d.cmd); err != nil {
				t.Fatalf("CMD %s: %v", rest, err)
			}
		case "LABEL":
			for _, m := range label.FindAllStringSubmatch(rest, -1) {
				d.labels[m[1]] = m[2]
			}
		case "COPY":
			if f := strings.Fields(rest); len(f) == 3 && f[0] == "--from=build" && strings.HasSuffix(f[1], "/kezchat") {
				d.binary = f[2]
			}
		}
	}
	if !d.fromScratchFound || d.user == "" || d.entrypoint == nil || d.binary == "" || len(d.files) == 0 || d.copiedCACerts == "" {
		t.Fatalf("the Dockerfile no longer reads as this test expects: %+v", d)
	}
	return d
}

// buildTestImage builds an index from this test binary (a Go binary with
// build info) standing in for both platforms' kezchat.
func buildTestImage(t *testing.T, out string) (imageSpec, []byte) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	spec := imageSpec{
		binaries: []platformBinary{{"linux", "amd64", exe}, {"linux", "arm64", exe}},
		version:  "v9.9.9-test", commit: "abc1234",
		created: time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC),
		caCerts: filepath.Join("testdata", "ca-certificates.crt"),
		npmLock: filepath.Join("testdata", "package-lock.json"),
	}
	if err := build(spec, out); err != nil {
		t.Fatal(err)
	}
	return spec, bin
}

func TestTheImageHoldsWhatTheDockerfileDescribes(t *testing.T) {
	want := readDockerfile(t)
	out := filepath.Join(t.TempDir(), "image")
	spec, bin := buildTestImage(t, out)
	certs, err := os.ReadFile(spec.caCerts)
	if err != nil {
		t.Fatal(err)
	}

	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := idx.MediaType(); mt != types.OCIImageIndex {
		t.Errorf("index media type %s, want %s", mt, types.OCIImageIndex)
	}
	// index.json is the index itself: a descriptor per platform.
	inner := idx
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range im.Manifests {
		platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		img, err := inner.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Config
		if c.User != want.user || !slices.Equal(c.Entrypoint, want.entrypoint) || !slices.Equal(c.Cmd, want.cmd) {
			t.Errorf("%s: user %q entrypoint %q cmd %q; the Dockerfile says %q %q %q",
				m.Platform.Architecture, c.User, c.Entrypoint, c.Cmd, want.user, want.entrypoint, want.cmd)
		}
		for k, v := range want.labels {
			if c.Labels[k] != v {
				t.Errorf("%s: label %s = %q, the Dockerfile says %q", m.Platform.Architecture, k, c.Labels[k], v)
			}
		}
		if cfg.OS != m.Platform.OS || cfg.Architecture != m.Platform.Architecture {
			t.Errorf("config says %s/%s under the index's %s/%s", cfg.OS, cfg.Architecture, m.Platform.OS, m.Platform.Architecture)
		}
		files := imageFiles(t, img)
		wantFiles := map[string]string{want.binary: string(bin), want.copiedCACerts: string(certs)}
		maps.Copy(wantFiles, want.files)
		if got, w := slices.Sorted(maps.Keys(files)), slices.Sorted(maps.Keys(wantFiles)); !slices.Equal(got, w) {
			t.Errorf("%s: files %q, the Dockerfile's %q", m.Platform.Architecture, got, w)
		}
		for p, content := range wantFiles {
			if files[p].content != content {
				t.Errorf("%s: %s differs from the Dockerfile's (%d bytes, want %d)", m.Platform.Architecture, p, len(files[p].content), len(content))
			}
			if files[p].uid != 0 || files[p].mode&0o022 != 0 || files[p].mode&0o444 != 0o444 {
				t.Errorf("%s: %s uid %d mode %o, want root's, world-readable, written by none", m.Platform.Architecture, p, files[p].uid, files[p].mode)
			}
		}
		if files[want.binary].mode&0o111 != 0o111 {
			t.Errorf("%s: %s mode %o, not executable by uid 10001", m.Platform.Architecture, want.binary, files[want.binary].mode)
		}
	}
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms %q, want linux/amd64 and linux/arm64", platforms)
	}
}

type imageFile struct {
	content string
	uid     int
	mode    int64
}

// imageFiles reads the regular files of img's layers.
func imageFiles(t *testing.T, img v1.Image) map[string]imageFile {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]imageFile{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files["/"+h.Name] = imageFile{content: string(b), uid: h.Uid, mode: h.Mode}
		}
		rc.Close()
	}
	return files
}

func TestTheSameInputsGiveTheSameImage(t *testing.T) {
	digest := func() v1.Hash {
		out := filepath.Join(t.TempDir(), "image")
		buildTestImage(t, out)
		idx, err := layout.ImageIndexFromPath(out)
		if err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if a, b := digest(), digest(); a != b {
		t.Fatalf("two builds of the same inputs: %s and %s", a, b)
	}
}

func TestTheSBOMListsTheGoModulesAndTheWebAppsNpmPackages(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image")
	buildTestImage(t, out)
	b, err := os.ReadFile(filepath.Join(out, "sbom.spdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc spdxDocument
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || len(doc.Relationships) != len(doc.Packages) {
		t.Fatalf("%s with %d packages and %d relationships", doc.SPDXVersion, len(doc.Packages), len(doc.Relationships))
	}
	refs := map[string]bool{}
	ids := map[string]bool{}
	for _, p := range doc.Packages {
		if ids[p.SPDXID] {
			t.Errorf("SPDX id %s twice", p.SPDXID)
		}
		ids[p.SPDXID] = true
		for _, r := range p.ExternalRefs {
			refs[r.ReferenceLocator] = true
		}
	}
	for _, want := range []string{
		"pkg:golang/github.com/google/go-containerregistry@v0.22.1", // a module of this test binary
		"pkg:npm/svelte@5.0.0",          // testdata's lockfile
		"pkg:npm/%40scope/nested@1.2.3", // a scoped package, nested
	} {
		if !refs[want] {
			t.Errorf("the SBOM lacks %s", want)
		}
	}
	if refs["pkg:npm/vitest@3.0.0"] {
		t.Error("the SBOM lists vitest, a dev dependency the web app does not embed")
	}
}
