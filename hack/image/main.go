// Command image builds the kezchat container image without a Docker
// engine: the files, user, entrypoint, command and labels of the
// Dockerfile's last stage, for linux/amd64 and linux/arm64 in one OCI image
// index, written as an OCI image layout, with an SPDX SBOM beside it. `make
// image` builds the two binaries and runs it:
//
//	go run ./hack/image --out bin/image --bin linux/amd64=bin/image/amd64/kezchat \
//	  --bin linux/arm64=bin/image/arm64/kezchat --version v0.1.0 --commit abc1234 \
//	  --created 2026-12-03T00:00:00Z --ca-certs /etc/ssl/certs/ca-certificates.crt \
//	  --npm-lock web/package-lock.json
//
// The layer is reproducible: its entries are sorted and carry the --created
// time, root's ownership and fixed modes.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// binFlag collects --bin platform=path pairs, in order.
type binFlag []platformBinary

type platformBinary struct{ os, arch, path string }

func (b *binFlag) String() string { return fmt.Sprint(*b) }

func (b *binFlag) Set(v string) error {
	plat, path, ok := strings.Cut(v, "=")
	osName, arch, ok2 := strings.Cut(plat, "/")
	if !ok || !ok2 || path == "" || osName == "" || arch == "" {
		return fmt.Errorf("want os/arch=path, got %q", v)
	}
	*b = append(*b, platformBinary{osName, arch, path})
	return nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var spec imageSpec
	var bins binFlag
	var out, created string
	fs.StringVar(&out, "out", "bin/image", "directory to write the OCI image layout (index.json, blobs/) and sbom.spdx.json to; emptied first")
	fs.Var(&bins, "bin", "os/arch=path of a kezchat binary built for that platform; repeat per platform")
	fs.StringVar(&spec.version, "version", "dev", "the image's version label")
	fs.StringVar(&spec.commit, "commit", "unknown", "the image's revision label")
	fs.StringVar(&created, "created", "", "RFC 3339 time the image and its files carry (default: the Unix epoch, for reproducible builds)")
	fs.StringVar(&spec.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "the CA certificate bundle copied to /etc/ssl/certs/ca-certificates.crt")
	fs.StringVar(&spec.npmLock, "npm-lock", "web/package-lock.json", "the web app's npm lockfile, for the SBOM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(bins) == 0 {
		return fmt.Errorf("no --bin given")
	}
	spec.created = time.Unix(0, 0).UTC()
	if created != "" {
		t, err := time.Parse(time.RFC3339, created)
		if err != nil {
			return fmt.Errorf("--created: %w", err)
		}
		spec.created = t.UTC()
	}
	spec.binaries = bins
	return build(spec, out)
}
