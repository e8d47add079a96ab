package controllers

import (
	"testing"

	"k8s.io/utils/ptr"
)

// Every pod runs as uid 10001 unless the platform assigns users
// (OpenShift's restricted SCC), when none names a user, group or fsGroup
// and each still refuses to run as root.
func TestThePlatformMayAssignTheUser(t *testing.T) {
	for _, assigns := range []bool{false, true} {
		in := testInputs
		in.PlatformAssignsUID = assigns
		pods := podSpecs(desiredObjects(newKezChat(), in))
		if len(pods) != 3 {
			t.Fatalf("want 3 workloads, got %d", len(pods))
		}
		for name, pod := range pods {
			sc := pod.Spec.SecurityContext
			if !ptr.Deref(sc.RunAsNonRoot, false) {
				t.Errorf("%s (platform assigns: %v) may run as root", name, assigns)
			}
			var want *int64
			if !assigns {
				want = ptr.To[int64](kezUID)
			}
			for field, got := range map[string]*int64{"runAsUser": sc.RunAsUser, "runAsGroup": sc.RunAsGroup, "fsGroup": sc.FSGroup} {
				if !ptr.Equal(got, want) {
					t.Errorf("%s (platform assigns: %v): %s %v, want %v", name, assigns, field, ptr.Deref(got, -1), ptr.Deref(want, -1))
				}
			}
			for _, c := range pod.Spec.Containers {
				if c.SecurityContext.RunAsUser != nil {
					t.Errorf("%s/%s names a user of its own", name, c.Name)
				}
			}
		}
	}
}
