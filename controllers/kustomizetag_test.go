package controllers

import (
	"os"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// `kubectl apply -k config/default` runs the release the chart installs,
// never a moving tag that would re-image every KezChat naming no image
// whenever it moves.
func TestConfigDefaultRunsTheChartsRelease(t *testing.T) {
	chart, err := os.ReadFile("../charts/kez-chat-operator/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for l := range strings.Lines(string(chart)) {
		if v, ok := strings.CutPrefix(l, "appVersion:"); ok {
			version = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	if version == "" || version == "latest" {
		t.Fatalf("Chart.yaml's appVersion is %q", version)
	}
	for _, u := range kustomizeBuild(t, "default") {
		if u.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
		if len(containers) != 1 {
			t.Fatalf("operator containers %v", containers)
		}
		image := containers[0].(map[string]any)["image"]
		if want := "ghcr.io/kez-lat/kezchat:" + version; image != want {
			t.Errorf("config/default runs %v, want the chart's release %s", image, want)
		}
		return
	}
	t.Fatal("config/default has no Deployment")
}
