package controllers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestNATSClaimTemplateKeepsItsSizeWhileTheCapFollowsTheSpec(t *testing.T) {
	grown := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("10Gi")) })
	in := testInputs
	in.NATSClaimTemplateSize = ptr.To(resource.MustParse("1Gi"))
	sts := natsStatefulSet(grown, in)
	if got := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("claim template %s, want the existing StatefulSet's 1Gi (templates cannot change)", got.String())
	}
	if conf := natsConf(grown, in); !strings.Contains(conf, "max_file_store: 9663676416\n") {
		t.Errorf("max_file_store does not follow the grown spec (90%% of 10Gi):\n%s", conf)
	}
	before := natsStatefulSet(newKezChat(), in)
	if sts.Spec.Template.Annotations[configHashAnnotation] == before.Spec.Template.Annotations[configHashAnnotation] {
		t.Error("growing the volume does not roll the NATS pods onto the new max_file_store")
	}
	// While a claim still asks for less (its expansion refused), the cap
	// stays what that claim holds.
	in.NATSStoreSize = ptr.To(resource.MustParse("1Gi"))
	if conf := natsConf(grown, in); !strings.Contains(conf, "max_file_store: 966367638\n") {
		t.Errorf("max_file_store is not 90%% of the smallest claim's 1Gi:\n%s", conf)
	}
	fresh := natsStatefulSet(grown, testInputs)
	if got := fresh.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("10Gi")) != 0 {
		t.Errorf("a new StatefulSet's claim template %s, want the spec's 10Gi", got.String())
	}
	if got := natsClaimTemplateSize(fresh); got == nil || got.Cmp(resource.MustParse("10Gi")) != 0 {
		t.Errorf("natsClaimTemplateSize %v, want 10Gi", got)
	}
}

func TestOnlyTheNATSReplicasClaimsAreGrown(t *testing.T) {
	kc := newKezChat()
	claim := func(name, size string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeClaimSpec{
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}}}
	}
	want := resource.MustParse("5Gi")
	for _, tt := range []struct {
		name, size string
		grow       bool
	}{
		{"data-chat-nats-0", "1Gi", true},
		{"data-chat-nats-12", "1Gi", true},
		{"data-chat-nats-0", "5Gi", false},
		{"data-chat-nats-0", "8Gi", false}, // never shrunk
		{"data-chat-nats-x", "1Gi", false},
		{"data-chat-nats-", "1Gi", false},
		{"data-chat-nats-other-0", "1Gi", false},
		{"chat-server-data", "1Gi", false},
	} {
		pvc := claim(tt.name, tt.size)
		if got := isNATSDataClaim(kc, pvc) && claimToGrow(pvc, want); got != tt.grow {
			t.Errorf("%s of %s grown to 5Gi: %v, want %v", tt.name, tt.size, got, tt.grow)
		}
	}
}

// The StatefulSet controller is not in envtest: the test makes the claims
// as it would, bound, and checks that growing spec.nats.storage.size grows
// them, leaves the StatefulSet's template alone (the API server refuses a
// change there) and lifts max_file_store.
func TestGrowingNATSStorageExpandsTheReplicasClaims(t *testing.T) {
	ns := testNamespace(t)
	// The API server lets a claim grow only when its class allows it.
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-expandable"},
		Provisioner: "example.org/test", AllowVolumeExpansion: ptr.To(true)}
	if err := k8s.Create(ctx, class); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(ctx, class) })
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Store = chatv1.StoreJetStream
		kc.Spec.NATS.Replicas = ptr.To[int32](3)
		kc.Spec.NATS.Storage.StorageClassName = ptr.To(class.Name)
	})
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	for i := range 3 {
		createBoundNATSClaim(t, sts, i)
	}
	markAllReady(t, ns)
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionReady: "True"})

	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("5Gi")) })
	for i := range 3 {
		waitFor[corev1.PersistentVolumeClaim](t, ns, fmt.Sprintf("data-chat-nats-%d", i), func(pvc *corev1.PersistentVolumeClaim) error {
			if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("5Gi")) != 0 {
				return fmt.Errorf("claim asks for %s", got.String())
			}
			return nil
		})
	}
	waitFor[corev1.ConfigMap](t, ns, "chat-nats-config", func(cm *corev1.ConfigMap) error {
		if !strings.Contains(cm.Data[natsConfigFile], "max_file_store: 4831838208\n") {
			return errors.New("max_file_store is not 90% of 5Gi")
		}
		return nil
	})
	after := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", func(s *appsv1.StatefulSet) error {
		if s.Spec.Template.Annotations[configHashAnnotation] == sts.Spec.Template.Annotations[configHashAnnotation] {
			return errors.New("NATS pods not rolled for the new max_file_store")
		}
		return nil
	})
	if got := after.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("claim template changed to %s", got.String())
	}
	// Nothing failed on the way: the apply of the StatefulSet went through.
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "False"})
}

// A storage class without expansion cannot grow the claims: the KezChat
// says so (Degraded, reason VolumeExpansionRefused), max_file_store keeps
// to the volume, and the rest of the spec still applies.
func TestARefusedNATSExpansionIsReportedAndBlocksNothingElse(t *testing.T) {
	ns := testNamespace(t)
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-fixed"}, Provisioner: "example.org/test"}
	if err := k8s.Create(ctx, class); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(ctx, class) })
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Store = chatv1.StoreJetStream
		kc.Spec.NATS.Storage.StorageClassName = ptr.To(class.Name)
	})
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	createBoundNATSClaim(t, sts, 0)

	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("5Gi"))
		kc.Spec.Image = "registry.example/kezchat:v2"
	})
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "True", chatv1.ConditionStalled: "True"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded); c.Reason != ReasonVolumeExpansion ||
		!strings.Contains(c.Message, "data-chat-nats-0") || !strings.Contains(c.Message, "allowVolumeExpansion") {
		t.Errorf("Degraded %s: %s", c.Reason, c.Message)
	}
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Spec.Containers[0].Image != "registry.example/kezchat:v2" {
			return errors.New("the rest of the spec did not apply")
		}
		return nil
	})
	cm := waitFor[corev1.ConfigMap](t, ns, "chat-nats-config", nil)
	if !strings.Contains(cm.Data[natsConfigFile], "max_file_store: 966367638\n") {
		t.Errorf("max_file_store left the 1Gi volume behind:\n%s", cm.Data[natsConfigFile])
	}
	if got, _ := get[corev1.PersistentVolumeClaim](ns, "data-chat-nats-0"); got.Spec.Resources.Requests.Storage().Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("claim asks for %s", got.Spec.Resources.Requests.Storage())
	}
}

// The same for the SQLite volume: a class without expansion keeps the
// claim and the server's --max-db-bytes at the old size, says so, and
// blocks nothing else; the user cannot shrink the spec back (the CRD
// refuses), so a blocked reconcile would be for good.
func TestARefusedServerVolumeGrowthBlocksNothingElse(t *testing.T) {
	ns := testNamespace(t)
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-fixed"}, Provisioner: "example.org/test"}
	if err := k8s.Create(ctx, class); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(ctx, class) })
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.StorageClassName = ptr.To(class.Name) })
	waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-server-data", nil)
	// Bound, as a provisioner would leave it, so that only the class
	// stands in the way of growing it.
	eventually(t, waitTimeout, "binding the claim", func() error {
		pvc, err := get[corev1.PersistentVolumeClaim](ns, "chat-server-data")
		if err != nil {
			return err
		}
		pvc.Spec.VolumeName = "pv-" + ns
		if err := k8s.Update(ctx, pvc); err != nil {
			return err
		}
		pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
			Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}
		return k8s.Status().Update(ctx, pvc)
	})

	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("5Gi"))
		kc.Spec.Image = "registry.example/kezchat:v2"
	})
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "True"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded); c.Reason != ReasonVolumeExpansion ||
		!strings.Contains(c.Message, "chat-server-data") {
		t.Errorf("Degraded %s: %s", c.Reason, c.Message)
	}
	d := waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Spec.Containers[0].Image != "registry.example/kezchat:v2" {
			return errors.New("the rest of the spec did not apply")
		}
		return nil
	})
	if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--max-db-bytes=966367638") {
		t.Errorf("args %q: --max-db-bytes left the 1Gi volume behind", args)
	}
}

// The server's limits follow what its claim asks for, never more than the
// spec: a claim still at 1Gi (growth refused) keeps the 1Gi limits.
func TestServerLimitsFollowTheClaim(t *testing.T) {
	kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("10Gi")) })
	in := testInputs
	in.ServerStoreSize = ptr.To(resource.MustParse("1Gi"))
	if args := storageLimits(kc, in); !slices.Contains(args, "--max-db-bytes=966367638") {
		t.Errorf("claim at 1Gi: %q", args)
	}
	in.ServerStoreSize = ptr.To(resource.MustParse("20Gi"))
	if args := storageLimits(kc, in); !slices.Contains(args, "--max-db-bytes=9663676416") {
		t.Errorf("claim bigger than the spec: %q, want the spec's 10Gi", args)
	}
}

// createBoundNATSClaim makes replica i's JetStream claim from sts's claim
// template, as the StatefulSet controller would, bound with 1Gi as a
// provisioner would leave it: only a bound claim may grow.
func createBoundNATSClaim(t *testing.T, sts *appsv1.StatefulSet, i int) {
	t.Helper()
	tmpl := sts.Spec.VolumeClaimTemplates[0]
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("data-%s-%d", sts.Name, i), Namespace: sts.Namespace, Labels: tmpl.Labels},
		Spec:       tmpl.Spec,
	}
	pvc.Spec.VolumeName = fmt.Sprintf("pv-%s-%d", sts.Namespace, i)
	if err := k8s.Create(ctx, pvc); err != nil {
		t.Fatal(err)
	}
	pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
		Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}
	if err := k8s.Status().Update(ctx, pvc); err != nil {
		t.Fatal(err)
	}
}
