package main

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// krewManifest is the part of a krew plugin manifest checked here.
type krewManifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version   string `json:"version"`
		Platforms []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Bin    string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

// The krew template names, for each platform `make plugin-dist` builds,
// the archive it writes and the binary in it; kubectl finds the plugin
// by the binary's name.
func TestKrewManifestMatchesThePlatformsMakeBuilds(t *testing.T) {
	data, err := os.ReadFile("../../hack/krew/kezchat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m krewManifest
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || m.Kind != "Plugin" || m.Metadata.Name != "kezchat" {
		t.Errorf("manifest header: %s %s %s", m.APIVersion, m.Kind, m.Metadata.Name)
	}
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(m.Spec.Version) {
		t.Errorf("spec.version %q is not vMAJOR.MINOR.PATCH", m.Spec.Version)
	}

	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^PLUGIN_PLATFORMS \?= (.*)$`).FindSubmatch(makefile)
	if line == nil {
		t.Fatal("no PLUGIN_PLATFORMS in the Makefile")
	}
	want := strings.Fields(string(line[1]))
	var got []string
	for _, p := range m.Spec.Platforms {
		os, arch := p.Selector.MatchLabels["os"], p.Selector.MatchLabels["arch"]
		got = append(got, os+"/"+arch)
		archive := fmt.Sprintf("/kubectl-kezchat_%s_%s.tar.gz", os, arch)
		if !strings.HasSuffix(p.URI, archive) {
			t.Errorf("%s/%s: uri %q does not end in %q", os, arch, p.URI, archive)
		}
		bin := "kubectl-kezchat"
		if os == "windows" {
			bin += ".exe"
		}
		if p.Bin != bin {
			t.Errorf("%s/%s: bin %q, want %q", os, arch, p.Bin, bin)
		}
		if p.SHA256 != "SHA256_"+strings.ToUpper(os+"_"+arch) {
			t.Errorf("%s/%s: sha256 placeholder %q", os, arch, p.SHA256)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("manifest platforms %v, Makefile's %v", got, want)
	}
}
