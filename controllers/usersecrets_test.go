package controllers

import (
	"errors"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/push"
)

func vapidPEM(t *testing.T) ([]byte, string) {
	t.Helper()
	pemData, err := push.NewKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key, err := push.ParseKeyPEM(pemData)
	if err != nil {
		t.Fatal(err)
	}
	return pemData, push.PublicKey(key)
}

// Editing the user's VAPID Secret rolls the chat server onto the new key at
// once: nothing else touches the KezChat or its children meanwhile, so only
// the watch of the Secret can wake the operator.
func TestEditingTheUsersVAPIDSecretTakesEffectAtOnce(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	first, firstPublic := vapidPEM(t)
	user := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "my-vapid", Namespace: ns}, Data: map[string][]byte{vapidPrivateKey: first}}
	if err := k8s.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	// A Secret no KezChat names wakes nothing.
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: ns}, StringData: map[string]string{"x": "1"}}
	if err := k8s.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	createKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Push.SecretName = "my-vapid" })
	eventually(t, waitTimeout, "status shows the first key", func() error {
		if got := getKezChat(t, ns).Status.VAPIDPublicKey; got != firstPublic {
			return fmt.Errorf("status key %q", got)
		}
		return nil
	})
	before := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	// Steady: every workload ready and reported, so no event is left to
	// wake the operator but the Secret's.
	markAllReady(t, ns)
	waitForConditions(t, ns, readyConditions)
	for name, want := range map[string]int{"my-vapid": 1, "unrelated": 0} {
		s := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		if got := mgr.reconciler.kezChatsNamingSecret(ctx, s); len(got) != want || (want == 1 && got[0].Name != "chat") {
			t.Errorf("an event of Secret %s queues %v", name, got)
		}
	}

	second, secondPublic := vapidPEM(t)
	user.Data = map[string][]byte{vapidPrivateKey: second}
	if err := k8s.Update(ctx, user); err != nil {
		t.Fatal(err)
	}
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Annotations[configHashAnnotation] == before.Spec.Template.Annotations[configHashAnnotation] {
			return errors.New("server pods not rolled for the edited key")
		}
		return nil
	})
	eventually(t, waitTimeout, "status shows the edited key", func() error {
		if got := getKezChat(t, ns).Status.VAPIDPublicKey; got != secondPublic {
			return fmt.Errorf("status key %q", got)
		}
		return nil
	})
}

func TestSecretNameOnlyKeepsNoData(t *testing.T) {
	in := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n", ResourceVersion: "7", UID: "u",
		Labels: map[string]string{"a": "b"}, Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"k\":\"secret\"}}"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}}
	out, err := secretNameOnly(in)
	if err != nil {
		t.Fatal(err)
	}
	m := out.(*metav1.PartialObjectMetadata)
	if m.Name != "s" || m.Namespace != "n" || m.ResourceVersion != "7" || m.UID != "u" {
		t.Errorf("identity lost: %+v", m.ObjectMeta)
	}
	if m.Labels != nil || m.Annotations != nil || m.ManagedFields != nil {
		t.Errorf("the cache would keep more than names: %+v", m.ObjectMeta)
	}
}
