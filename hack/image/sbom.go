package main

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// An SPDX 2.3 document (JSON): the kezchat binary, the Go modules its build
// info lists (the same in every platform's binary) and the npm packages
// the web app embeds (the lockfile's, less those marked dev).

type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name             string       `json:"name"`
	SPDXID           string       `json:"SPDXID"`
	VersionInfo      string       `json:"versionInfo,omitempty"`
	DownloadLocation string       `json:"downloadLocation"`
	FilesAnalyzed    bool         `json:"filesAnalyzed"`
	ExternalRefs     []spdxExtRef `json:"externalRefs,omitempty"`
	PrimaryPurpose   string       `json:"primaryPackagePurpose,omitempty"`
	Comment          string       `json:"comment,omitempty"`
}

type spdxExtRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// buildSBOM describes the binaries (their build info must agree on the
// modules) and the web app's npm packages.
func buildSBOM(spec imageSpec, bins []readBinary, now time.Time) ([]byte, error) {
	var info *buildinfo.BuildInfo
	root := spdxPackage{Name: "kezchat", SPDXID: "SPDXRef-Package-kezchat", VersionInfo: spec.version,
		DownloadLocation: "NOASSERTION", PrimaryPurpose: "APPLICATION"}
	for _, b := range bins {
		bi, err := buildinfo.Read(bytes.NewReader(b.data))
		if err != nil {
			return nil, fmt.Errorf("reading the build info of %s: %w", b.path, err)
		}
		if info != nil && depsKey(bi) != depsKey(info) {
			return nil, fmt.Errorf("%s was built from other modules than %s", b.path, bins[0].path)
		}
		info = bi
		sum := sha256.Sum256(b.data)
		root.Comment += fmt.Sprintf("%s/%s binary sha256 %s; ", b.os, b.arch, hex.EncodeToString(sum[:]))
	}
	root.Comment = strings.TrimSuffix(root.Comment, "; ")
	root.ExternalRefs = []spdxExtRef{purl("golang", info.Main.Path, spec.version)}
	doc := spdxDocument{
		SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT",
		Name:              "kezchat-" + spec.version,
		DocumentNamespace: "https://kez.lat/spdx/kezchat/" + spec.version + "/" + spec.commit,
		CreationInfo:      spdxCreationInfo{Created: now.Format(time.RFC3339), Creators: []string{"Tool: kez-chat hack/image", "Tool: " + info.GoVersion}},
		Packages:          []spdxPackage{root},
		Relationships:     []spdxRelationship{{"SPDXRef-DOCUMENT", "DESCRIBES", root.SPDXID}},
	}
	add := func(p spdxPackage) {
		doc.Packages = append(doc.Packages, p)
		doc.Relationships = append(doc.Relationships, spdxRelationship{root.SPDXID, "CONTAINS", p.SPDXID})
	}
	for _, m := range info.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		p := spdxPackage{Name: m.Path, SPDXID: spdxID("go", m.Path, m.Version), VersionInfo: m.Version,
			DownloadLocation: "https://proxy.golang.org/" + m.Path + "/@v/" + m.Version + ".zip",
			ExternalRefs:     []spdxExtRef{purl("golang", m.Path, m.Version)}}
		if h, ok := strings.CutPrefix(m.Sum, "h1:"); ok {
			p.Comment = "go.sum h1:" + h
		}
		add(p)
	}
	npm, err := npmPackages(spec.npmLock)
	if err != nil {
		return nil, err
	}
	for _, p := range npm {
		add(spdxPackage{Name: p.name, SPDXID: spdxID("npm", p.name, p.version), VersionInfo: p.version,
			DownloadLocation: orNoAssertion(p.resolved), ExternalRefs: []spdxExtRef{purl("npm", p.name, p.version)}})
	}
	return json.MarshalIndent(doc, "", "  ")
}

func depsKey(bi *buildinfo.BuildInfo) string {
	var b strings.Builder
	for _, m := range bi.Deps {
		fmt.Fprintf(&b, "%s@%s\n", m.Path, m.Version)
	}
	return b.String()
}

func purl(kind, name, version string) spdxExtRef {
	if kind == "npm" && strings.HasPrefix(name, "@") {
		name = "%40" + name[1:] // the purl spec's encoding of a scope
	}
	return spdxExtRef{ReferenceCategory: "PACKAGE-MANAGER", ReferenceType: "purl", ReferenceLocator: "pkg:" + kind + "/" + name + "@" + version}
}

// spdxID makes an SPDX identifier (letters, digits, '.' and '-') unique
// per package and version.
func spdxID(kind, name, version string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
				return r
			}
			return '-'
		}, s)
	}
	return "SPDXRef-" + kind + "-" + clean(name) + "-" + clean(version)
}

func orNoAssertion(s string) string {
	if s == "" {
		return "NOASSERTION"
	}
	return s
}

type npmPackage struct{ name, version, resolved string }

// npmPackages lists the lockfile's packages that are not dev-only: what
// the built web app can contain.
func npmPackages(lockPath string) ([]npmPackage, error) {
	b, err := os.ReadFile(lockPath)
	if err != nil {
		return nil, fmt.Errorf("reading the npm lockfile: %w", err)
	}
	var lock struct {
		LockfileVersion int `json:"lockfileVersion"`
		Packages        map[string]struct {
			Version  string `json:"version"`
			Resolved string `json:"resolved"`
			Dev      bool   `json:"dev"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(b, &lock); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", lockPath, err)
	}
	if lock.LockfileVersion < 2 {
		return nil, fmt.Errorf("%s: lockfileVersion %d has no packages map", lockPath, lock.LockfileVersion)
	}
	var out []npmPackage
	seen := map[string]bool{}
	for path, p := range lock.Packages {
		// "" is the web app itself; "node_modules/a/node_modules/@s/b" is b.
		i := strings.LastIndex(path, "node_modules/")
		if i < 0 || p.Dev {
			continue
		}
		name := path[i+len("node_modules/"):]
		if seen[name+"@"+p.Version] {
			continue
		}
		seen[name+"@"+p.Version] = true
		out = append(out, npmPackage{name: name, version: p.Version, resolved: p.Resolved})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].version < out[j].version
	})
	return out, nil
}
