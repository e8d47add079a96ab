package controllers

import (
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
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

// config/openshift is config/default with the users left to the platform.
func TestConfigOpenShiftLeavesTheUserToThePlatform(t *testing.T) {
	var found bool
	for _, u := range kustomizeBuild(t, "openshift") {
		if u.GetKind() != "Deployment" {
			continue
		}
		found = true
		var d appsv1.Deployment
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &d); err != nil {
			t.Fatal(err)
		}
		sc := d.Spec.Template.Spec.SecurityContext
		if sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || sc.RunAsUser != nil || sc.RunAsGroup != nil {
			t.Errorf("operator pod security context %+v, want non-root with no user or group", sc)
		}
		if v, _ := envValue(d.Spec.Template.Spec.Containers[0], "KEZ_PLATFORM_ASSIGNS_UID"); v != "true" {
			t.Errorf("KEZ_PLATFORM_ASSIGNS_UID=%q: the KezChats' pods would name uid 10001", v)
		}
	}
	if !found {
		t.Fatal("config/openshift has no Deployment")
	}
}
