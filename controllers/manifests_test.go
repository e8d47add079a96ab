package controllers

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// kustomizeBuild renders a kustomization under config/, as `kubectl apply
// -k` would.
func kustomizeBuild(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("..", "config", dir))
	if err != nil {
		t.Fatalf("kustomize build config/%s: %v", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range res.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		// Decoded as the API machinery does, so numbers are int64.
		u := &unstructured.Unstructured{}
		if err := runtime.DecodeInto(unstructured.UnstructuredJSONScheme, data, u); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestConfigDefaultInstallsTheOperatorLockedDown(t *testing.T) {
	objs := kustomizeBuild(t, "default")
	var kinds []string
	var operator *appsv1.Deployment
	for _, u := range objs {
		kinds = append(kinds, u.GetKind()+"/"+u.GetName())
		if u.GetKind() == "Deployment" {
			operator = &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, operator); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, want := range []string{
		"Namespace/kez-chat-system", "CustomResourceDefinition/kezchats.chat.kez.lat", "CustomResourceDefinition/kezchatbackups.chat.kez.lat",
		"ClusterRole/kez-chat-manager-role", "ClusterRoleBinding/kez-chat-manager-rolebinding",
		"ServiceAccount/kez-chat-operator", "Deployment/kez-chat-operator",
	} {
		if !slices.Contains(kinds, want) {
			t.Errorf("config/default lacks %s; has %q", want, kinds)
		}
	}
	if operator == nil {
		t.Fatal("no operator Deployment")
	}
	pod := operator.Spec.Template.Spec
	c := pod.Containers[0]
	if v, _ := envValue(c, "KEZ_IMAGE"); v != c.Image {
		t.Errorf("KEZ_IMAGE %q is not the operator's image %q: KezChats would run another version", v, c.Image)
	}
	if v, _ := envValue(c, "KEZ_MAX_CONCURRENT_UPGRADES"); v != fmt.Sprint(DefaultMaxConcurrentUpgrades) {
		t.Errorf("KEZ_MAX_CONCURRENT_UPGRADES %q, want the operator's default %d", v, DefaultMaxConcurrentUpgrades)
	}
	if v, _ := envValue(c, "KEZ_UPGRADE_TIMEOUT"); v != "15m" || DefaultUpgradeTimeout != 15*time.Minute {
		t.Errorf("KEZ_UPGRADE_TIMEOUT %q; the operator's default %s", v, DefaultUpgradeTimeout)
	}
	if pod.SecurityContext == nil || !ptr.Deref(pod.SecurityContext.RunAsNonRoot, false) || pod.SecurityContext.SeccompProfile == nil {
		t.Errorf("operator pod security context %+v", pod.SecurityContext)
	}
	if sc := c.SecurityContext; sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("operator container security context %+v", c.SecurityContext)
	}
	if !slices.Contains(c.Args, "--leader-elect") || c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Errorf("operator args %q, probes %v %v", c.Args, c.LivenessProbe, c.ReadinessProbe)
	}

	// The API server takes every object as it is, in order, as kubectl
	// apply -k would send them (the CRD is the one the suite installed, so
	// it is applied unchanged).
	// The namespace admission plugin learns of a new namespace through a
	// watch, so objects in it are retried for a moment, as kubectl's user
	// would.
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		return boolRank(b.GetKind() == "Namespace") - boolRank(a.GetKind() == "Namespace")
	})
	for _, u := range objs {
		eventually(t, waitTimeout, "applying "+u.GetKind()+"/"+u.GetName(), func() error {
			return k8s.Apply(ctx, client.ApplyConfigurationFromUnstructured(u.DeepCopy()), client.FieldOwner("test"), client.ForceOwnership)
		})
	}
}

func TestSampleKezChatIsValid(t *testing.T) {
	ns := testNamespace(t)
	objs := kustomizeBuild(t, "samples")
	if len(objs) == 0 {
		t.Fatal("no samples")
	}
	for _, u := range objs {
		u.SetNamespace(ns)
		if err := k8s.Create(ctx, u); err != nil {
			t.Fatalf("creating sample %s: %v", u.GetName(), err)
		}
		if u.GetKind() == "KezChatBackup" {
			var b chatv1.KezChatBackup
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(u), &b); err != nil {
				t.Fatal(err)
			}
			if _, err := get[chatv1.KezChat](ns, b.Spec.KezChat.Name); err != nil {
				t.Errorf("sample KezChatBackup %s names KezChat %s, which no sample is: %v", b.Name, b.Spec.KezChat.Name, err)
			}
			continue
		}
		var kc chatv1.KezChat
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(u), &kc); err != nil {
			t.Fatal(err)
		}
		// TLS is the Ingress's, or, for a sample exposed by a Gateway
		// alone, the Gateway's listener's.
		if kc.Spec.Domain == "" || (kc.Spec.Ingress.TLSSecretName == "" && !(kc.Spec.Gateway.IsEnabled() && !kc.Spec.Ingress.IsEnabled())) {
			t.Errorf("sample %s is not realistic: %+v", kc.Name, kc.Spec)
		}
	}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}
