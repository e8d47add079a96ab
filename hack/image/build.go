package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the Dockerfile's last stage declares; image_test.go reads the
// Dockerfile and holds these to it.
const (
	imageUser  = "10001:10001"
	passwdLine = "kezchat:x:10001:10001:kezchat:/nonexistent:/sbin/nologin\n"
	groupLine  = "kezchat:x:10001:\n"
	binaryPath = "/kezchat"
	caCertPath = "/etc/ssl/certs/ca-certificates.crt"
)

var (
	imageEntrypoint = []string{binaryPath}
	imageCmd        = []string{"server"}
)

const (
	labelTitle       = "kezchat"
	labelDescription = "Self-hosted, end-to-end-encrypted chat: server, sig-server and Kubernetes operator"
)

// imageSpec is what one image index is built from.
type imageSpec struct {
	binaries        []platformBinary
	version, commit string
	created         time.Time
	caCerts         string
	npmLock         string
}

func (s imageSpec) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       labelTitle,
		"org.opencontainers.image.description": labelDescription,
		"org.opencontainers.image.version":     s.version,
		"org.opencontainers.image.revision":    s.commit,
		"org.opencontainers.image.created":     s.created.Format(time.RFC3339),
	}
}

// build writes the index of spec's platforms as an OCI image layout in out,
// and the SBOM beside it.
func build(spec imageSpec, out string) error {
	certs, err := os.ReadFile(spec.caCerts)
	if err != nil {
		return fmt.Errorf("reading the CA certificates: %w", err)
	}
	// Each binary is read once: into its layer, and for the SBOM.
	bins := make([]readBinary, len(spec.binaries))
	for i, b := range spec.binaries {
		data, err := os.ReadFile(b.path)
		if err != nil {
			return fmt.Errorf("reading the %s/%s binary: %w", b.os, b.arch, err)
		}
		bins[i] = readBinary{b, data}
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, b := range bins {
		img, err := platformImage(spec, b.platformBinary, b.data, certs)
		if err != nil {
			return fmt.Errorf("building the %s/%s image: %w", b.os, b.arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				Platform:    &v1.Platform{OS: b.os, Architecture: b.arch},
				Annotations: map[string]string{"org.opencontainers.image.ref.name": spec.version},
			},
		})
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if _, err := layout.Write(out, idx); err != nil {
		return fmt.Errorf("writing the image layout to %s: %w", out, err)
	}
	sbom, err := buildSBOM(spec, bins, time.Now().UTC())
	if err != nil {
		return fmt.Errorf("building the SBOM: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "sbom.spdx.json"), sbom, 0o644); err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("image: %s (index %s), sbom.spdx.json beside it\n", out, digest)
	return nil
}

// platformImage is one platform's image: one layer holding the binary, the
// CA certificates and the passwd and group entries of uid 10001.
func platformImage(spec imageSpec, b platformBinary, bin, certs []byte) (v1.Image, error) {
	files := []layerFile{
		{path: "/etc/group", mode: 0o644, data: []byte(groupLine)},
		{path: "/etc/passwd", mode: 0o644, data: []byte(passwdLine)},
		{path: caCertPath, mode: 0o644, data: certs},
		{path: binaryPath, mode: 0o755, data: bin},
	}
	tarBytes, err := layerTar(files, spec.created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = b.os, b.arch
	cfg.Created = v1.Time{Time: spec.created}
	cfg.Config = v1.Config{
		User:       imageUser,
		Entrypoint: imageEntrypoint,
		Cmd:        imageCmd,
		Labels:     spec.labels(),
	}
	return mutate.ConfigFile(img, cfg)
}

// readBinary is a platform's binary and its bytes.
type readBinary struct {
	platformBinary
	data []byte
}

type layerFile struct {
	path string
	mode int64
	data []byte
}

// layerTar writes files, and the directories above them, as a tar owned by
// root with every time set to mtime: the same input gives the same bytes.
func layerTar(files []layerFile, mtime time.Time) ([]byte, error) {
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.path); d != "/"; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	var entries []entry
	for d := range dirs {
		entries = append(entries, entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755}})
	}
	for _, f := range files {
		entries = append(entries, entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: f.path[1:], Mode: f.mode, Size: int64(len(f.data))}, data: f.data})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		e.hdr.ModTime, e.hdr.Format = mtime, tar.FormatPAX
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
