package charts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// chartMetadata is Chart.yaml as chart-testing's schema (ct's
// etc/chart_schema.yaml, which ct checks with yamale) allows it: a field
// it does not know, or one of another type, fails the strict decode.
type chartMetadata struct {
	Name         string            `json:"name"`
	Home         string            `json:"home,omitempty"`
	Version      string            `json:"version"`
	APIVersion   string            `json:"apiVersion"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Maintainers  []chartMaintainer `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Type         string            `json:"type,omitempty"`
	Dependencies []map[string]any  `json:"dependencies,omitempty"`
}

type chartMaintainer struct {
	Name  string `json:"name"`
	Email string `json:"email,omitempty"`
	URL   string `json:"url,omitempty"`
}

func readChartMetadata(t *testing.T) chartMetadata {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var md chartMetadata
	if err := yaml.UnmarshalStrict(data, &md); err != nil {
		t.Fatalf("Chart.yaml against chart-testing's schema: %v", err)
	}
	return md
}

// Chart.yaml carries what people search a chart by: home, sources, icon,
// keywords, maintainers; required fields are set as ct's schema wants.
func TestChartYAMLHasTheMetadataPeopleSearchBy(t *testing.T) {
	md := readChartMetadata(t)
	for field, v := range map[string]string{"name": md.Name, "version": md.Version, "apiVersion": md.APIVersion,
		"appVersion": md.AppVersion, "description": md.Description, "home": md.Home, "icon": md.Icon, "kubeVersion": md.KubeVersion} {
		if v == "" {
			t.Errorf("Chart.yaml has no %s", field)
		}
	}
	if !strings.HasPrefix(md.Icon, "https://") || !strings.HasPrefix(md.Home, "https://") {
		t.Errorf("icon %q and home %q must be https URLs", md.Icon, md.Home)
	}
	if len(md.Sources) == 0 || len(md.Keywords) < 3 || len(md.Maintainers) == 0 {
		t.Errorf("sources %v, keywords %v, maintainers %v", md.Sources, md.Keywords, md.Maintainers)
	}
	for _, m := range md.Maintainers {
		if m.Name == "" {
			t.Errorf("a maintainer without a name: %+v", m)
		}
	}
	// The icon is a file of this repository, at the path the URL names.
	if i := strings.Index(md.Icon, "/main/"); i < 0 {
		t.Errorf("icon %q is not a file of the main branch", md.Icon)
	} else if _, err := os.Stat(filepath.Join("..", md.Icon[i+len("/main/"):])); err != nil {
		t.Errorf("icon %q: %v", md.Icon, err)
	}
}

// The Artifact Hub annotations say what the chart installs: every CRD of
// config/crd with its served version, the image at the appVersion, and
// examples that are valid objects of the API.
func TestChartArtifactHubAnnotationsMatchTheOperator(t *testing.T) {
	md := readChartMetadata(t)
	a := md.Annotations
	if a["artifacthub.io/operator"] != "true" || a["artifacthub.io/operatorCapabilities"] == "" {
		t.Errorf("operator annotations: %v", a)
	}
	categories := []string{"ai-machine-learning", "database", "integration-delivery", "monitoring-logging",
		"networking", "security", "storage", "streaming-messaging"}
	if !slices.Contains(categories, a["artifacthub.io/category"]) {
		t.Errorf("artifacthub.io/category %q is none of Artifact Hub's %v", a["artifacthub.io/category"], categories)
	}

	var crds []struct{ Kind, Version, Name, DisplayName, Description string }
	if err := yaml.UnmarshalStrict([]byte(a["artifacthub.io/crds"]), &crds); err != nil {
		t.Fatalf("artifacthub.io/crds: %v", err)
	}
	files, err := filepath.Glob("../config/crd/bases/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in config/crd/bases: %v", err)
	}
	var want, got []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(data, &crd); err != nil {
			t.Fatal(err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Storage {
				want = append(want, crd.Spec.Names.Kind+"/"+v.Name+"/"+crd.Name)
			}
		}
	}
	for _, c := range crds {
		got = append(got, c.Kind+"/"+c.Version+"/"+c.Name)
		if c.DisplayName == "" || c.Description == "" {
			t.Errorf("CRD %s lacks a display name or description", c.Name)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("artifacthub.io/crds lists %v, config/crd has %v", got, want)
	}

	var images []struct {
		Name, Image string
		Platforms   []string
	}
	if err := yaml.UnmarshalStrict([]byte(a["artifacthub.io/images"]), &images); err != nil {
		t.Fatalf("artifacthub.io/images: %v", err)
	}
	if len(images) != 1 || !strings.HasSuffix(images[0].Image, ":"+md.AppVersion) {
		t.Errorf("artifacthub.io/images %+v, want the kezchat image at appVersion %s", images, md.AppVersion)
	}

	var links []struct{ Name, URL string }
	if err := yaml.UnmarshalStrict([]byte(a["artifacthub.io/links"]), &links); err != nil {
		t.Fatalf("artifacthub.io/links: %v", err)
	}
	for _, l := range links {
		// A link into this repository names a file that exists.
		if i := strings.Index(l.URL, "/blob/main/"); i >= 0 {
			if _, err := os.Stat(filepath.Join("..", l.URL[i+len("/blob/main/"):])); err != nil {
				t.Errorf("link %s: %v", l.Name, err)
			}
		}
	}

	var examples []map[string]any
	if err := yaml.Unmarshal([]byte(a["artifacthub.io/crdsExamples"]), &examples); err != nil {
		t.Fatalf("artifacthub.io/crdsExamples: %v", err)
	}
	kinds := map[string]bool{}
	for _, ex := range examples {
		data, err := yaml.Marshal(ex)
		if err != nil {
			t.Fatal(err)
		}
		kind, _ := ex["kind"].(string)
		kinds[kind] = true
		var obj any
		switch kind {
		case "KezChat":
			obj = &chatv1.KezChat{}
		case "KezChatBackup":
			obj = &chatv1.KezChatBackup{}
		default:
			t.Errorf("example of unknown kind %q", kind)
			continue
		}
		if err := yaml.UnmarshalStrict(data, obj); err != nil {
			t.Errorf("example %s is not a valid %s: %v", ex["metadata"], kind, err)
		}
	}
	for _, c := range crds {
		if !kinds[c.Kind] {
			t.Errorf("no example of %s", c.Kind)
		}
	}
}

// ct lint, as chart repositories run it: helm lint, and yamllint with ct's
// own rules over Chart.yaml and values.yaml. ct's schema check needs
// yamale (Python, not installable here): TestChartYAMLHasTheMetadata...
// decodes Chart.yaml strictly against the same schema instead. Maintainer
// accounts are looked up on GitHub (no network here), and version
// increments are checked against a remote branch CI does not have.
func TestChartPassesChartTestingLint(t *testing.T) {
	tools := toolsDir(t)
	ct := filepath.Join(tools, "ct")
	if _, err := os.Stat(ct); err != nil {
		t.Fatalf("no ct in %s: run `make k8s-tools` (or `make test`, which does) to build it", tools)
	}
	if _, err := exec.LookPath("yamllint"); err != nil {
		t.Fatal("yamllint is not installed (Debian's yamllint; .ci/run installs it)")
	}
	conf := ctConfigDir(t)
	home := t.TempDir()
	cmd := exec.Command(ct, "lint", "--charts", chart,
		"--validate-maintainers=false", "--check-version-increment=false", "--validate-chart-schema=false",
		"--lint-conf", filepath.Join(conf, "lintconf.yaml"), "--chart-yaml-schema", filepath.Join(conf, "chart_schema.yaml"))
	cmd.Env = []string{"PATH=" + tools + ":" + os.Getenv("PATH"), "HOME=" + home,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"), "HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data")}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("ct lint: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "All charts linted successfully") {
		t.Errorf("ct lint said:\n%s", out.String())
	}
}

// ctConfigDir is ct's etc/ (its yamllint rules and chart schema) in the
// module ct was built from.
func ctConfigDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/helm/chart-testing/v3")
	cmd.Dir = "../hack/tools/ct"
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("locating chart-testing's module: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "etc")
}
