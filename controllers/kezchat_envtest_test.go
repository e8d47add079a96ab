package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/push"
)

var ctx = context.Background()

// createKezChat makes a KezChat named chat in ns, as a user would apply it.
func createKezChat(t *testing.T, ns string, mutate ...func(*chatv1.KezChat)) *chatv1.KezChat {
	t.Helper()
	kc := &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns},
		Spec:       chatv1.KezChatSpec{Domain: "chat.example.org"},
	}
	for _, m := range mutate {
		m(kc)
	}
	if err := k8s.Create(ctx, kc); err != nil {
		t.Fatalf("creating KezChat: %v", err)
	}
	return kc
}

func getKezChat(t *testing.T, ns string) *chatv1.KezChat {
	t.Helper()
	var kc chatv1.KezChat
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "chat"}, &kc); err != nil {
		t.Fatal(err)
	}
	return &kc
}

// updateKezChat changes the KezChat, retrying on conflicts with the
// operator's status writes.
func updateKezChat(t *testing.T, ns string, mutate func(*chatv1.KezChat)) {
	t.Helper()
	for range 10 {
		kc := getKezChat(t, ns)
		mutate(kc)
		err := k8s.Update(ctx, kc)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatalf("updating KezChat: %v", err)
		}
	}
	t.Fatal("updating KezChat: conflicts kept coming")
}

func get[T any, PT interface {
	*T
	client.Object
}](ns, name string) (PT, error) {
	obj := PT(new(T))
	err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj)
	return obj, err
}

// waitFor waits until the object exists and check accepts it.
func waitFor[T any, PT interface {
	*T
	client.Object
}](t *testing.T, ns, name string, check func(PT) error) PT {
	t.Helper()
	var obj PT
	eventually(t, waitTimeout, fmt.Sprintf("%T %s", obj, name), func() error {
		var err error
		if obj, err = get[T, PT](ns, name); err != nil {
			return err
		}
		if check != nil {
			return check(obj)
		}
		return nil
	})
	return obj
}

func condition(kc *chatv1.KezChat, typ string) metav1.ConditionStatus {
	if c := meta.FindStatusCondition(kc.Status.Conditions, typ); c != nil {
		return c.Status
	}
	return "absent"
}

// waitForConditions waits until each condition named has the status given.
func waitForConditions(t *testing.T, ns string, want map[string]metav1.ConditionStatus) *chatv1.KezChat {
	t.Helper()
	var kc *chatv1.KezChat
	eventually(t, waitTimeout, fmt.Sprintf("conditions %v", want), func() error {
		kc = getKezChat(t, ns)
		if kc.Status.ObservedGeneration != kc.Generation {
			return fmt.Errorf("status observed generation %d of %d", kc.Status.ObservedGeneration, kc.Generation)
		}
		for typ, status := range want {
			if got := condition(kc, typ); got != status {
				return fmt.Errorf("%s is %s, want %s (%+v)", typ, got, status, kc.Status.Conditions)
			}
		}
		return nil
	})
	return kc
}

// markDeploymentReady plays the Deployment controller and kubelets, which
// envtest does not run: every replica of the current spec is available.
func markDeploymentReady(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, waitTimeout, "marking Deployment "+name+" ready", func() error {
		d, err := get[appsv1.Deployment](ns, name)
		if err != nil {
			return err
		}
		n := ptr.Deref(d.Spec.Replicas, 1)
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		return k8s.Status().Update(ctx, d)
	})
}

// markStatefulSetReady plays the StatefulSet controller and kubelets.
func markStatefulSetReady(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, waitTimeout, "marking StatefulSet "+name+" ready", func() error {
		s, err := get[appsv1.StatefulSet](ns, name)
		if err != nil {
			return err
		}
		n := ptr.Deref(s.Spec.Replicas, 1)
		rev := fmt.Sprintf("%s-%d", name, s.Generation)
		s.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.Generation, Replicas: n, ReadyReplicas: n, AvailableReplicas: n,
			UpdatedReplicas: n, CurrentReplicas: n, CurrentRevision: rev, UpdateRevision: rev}
		return k8s.Status().Update(ctx, s)
	})
}

func markAllReady(t *testing.T, ns string) {
	t.Helper()
	markDeploymentReady(t, ns, "chat-server")
	markDeploymentReady(t, ns, "chat-sig-server")
	markStatefulSetReady(t, ns, "chat-nats")
}

var readyConditions = map[string]metav1.ConditionStatus{
	chatv1.ConditionReady: "True", chatv1.ConditionProgressing: "False", chatv1.ConditionDegraded: "False",
	chatv1.ConditionServerReady: "True", chatv1.ConditionNATSReady: "True", chatv1.ConditionSigServerReady: "True",
	chatv1.ConditionReconciling: "False", chatv1.ConditionStalled: "False",
}

func controlledBy(obj client.Object, kc *chatv1.KezChat) error {
	if !metav1.IsControlledBy(obj, kc) {
		return fmt.Errorf("%s is not controlled by the KezChat: %+v", obj.GetName(), obj.GetOwnerReferences())
	}
	return nil
}

func TestKezChatGetsEveryChildWithTheRightContent(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	kc := createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Ingress.TLSSecretName = "chat-tls"
		kc.Spec.Ingress.ClassName = ptr.To("nginx")
		kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("5Gi"))
	})
	kc = getKezChat(t, ns)

	d := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example/kezchat:test" || !slices.Contains(c.Args, "--domain=chat.example.org") ||
		!slices.Contains(c.Args, "--public-url=https://chat.example.org") {
		t.Errorf("server container image %s args %q", c.Image, c.Args)
	}
	pvc := waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-server-data", nil)
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("5Gi")) != 0 {
		t.Errorf("server volume %s, want 5Gi", got.String())
	}
	cm := waitFor[corev1.ConfigMap](t, ns, "chat-nats-config", nil)
	if !strings.Contains(cm.Data["nats.conf"], "jetstream {") {
		t.Errorf("nats.conf without JetStream:\n%s", cm.Data["nats.conf"])
	}
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	if sts.Spec.Template.Spec.Containers[0].Image != DefaultNATSImage {
		t.Errorf("NATS image %s", sts.Spec.Template.Spec.Containers[0].Image)
	}
	ing := waitFor[networkingv1.Ingress](t, ns, "chat", nil)
	if ing.Spec.Rules[0].Host != "chat.example.org" || ptr.Deref(ing.Spec.IngressClassName, "") != "nginx" || ing.Spec.TLS[0].SecretName != "chat-tls" {
		t.Errorf("ingress %+v", ing.Spec)
	}
	secret := waitFor[corev1.Secret](t, ns, "chat-vapid", nil)
	key, err := push.ParseKeyPEM(secret.Data["private-key.pem"])
	if err != nil {
		t.Fatalf("generated VAPID key: %v", err)
	}
	natsSecret := waitFor[corev1.Secret](t, ns, "chat-nats-auth", nil)
	auth, err := natsAuthOf(natsSecret)
	if err != nil {
		t.Fatalf("generated NATS auth: %v", err)
	}
	if !strings.Contains(cm.Data["nats.conf"], "issuer: "+auth.issuer) || strings.Contains(cm.Data["nats.conf"], string(natsSecret.Data["password"])) {
		t.Errorf("nats.conf does not name the generated issuer, or holds the password:\n%s", cm.Data["nats.conf"])
	}

	children := []client.Object{d, cm, sts, ing, natsSecret}
	for _, name := range []string{"chat-server", "chat-nats", "chat-nats-headless", "chat-sig-server"} {
		children = append(children, waitFor[corev1.Service](t, ns, name, nil))
	}
	for _, name := range []string{"chat-server", "chat-nats", "chat-sig-server"} {
		children = append(children, waitFor[networkingv1.NetworkPolicy](t, ns, name, nil))
	}
	children = append(children,
		waitFor[appsv1.Deployment](t, ns, "chat-sig-server", nil),
		waitFor[corev1.ServiceAccount](t, ns, "chat", nil))
	for _, child := range children {
		if err := controlledBy(child, kc); err != nil {
			t.Error(err)
		}
	}
	// The data is no child under deletionPolicy Retain, the default: no
	// deletion, of any propagation, takes it.
	for _, data := range []client.Object{pvc, secret, waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-sig-server-data", nil)} {
		if refs := data.GetOwnerReferences(); len(refs) > 0 {
			t.Errorf("%s is owned: %+v", data.GetName(), refs)
		}
	}
	// One replica: no disruption budget.
	if _, err := get[policyv1.PodDisruptionBudget](ns, "chat-server"); !apierrors.IsNotFound(err) {
		t.Errorf("a one-replica server has a PodDisruptionBudget (%v)", err)
	}

	kc = waitForConditions(t, ns, map[string]metav1.ConditionStatus{
		chatv1.ConditionReady: "False", chatv1.ConditionProgressing: "True", chatv1.ConditionDegraded: "False",
	})
	if kc.Status.URL != "https://chat.example.org" || kc.Status.VAPIDPublicKey != push.PublicKey(key) {
		t.Errorf("status URL %q VAPID key %q, want https://chat.example.org and %q", kc.Status.URL, kc.Status.VAPIDPublicKey, push.PublicKey(key))
	}

	eventually(t, waitTimeout, "a Created event for the KezChat", func() error {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			// One event names every child the reconcile created.
			if e.Regarding.Name == "chat" && e.Reason == "Created" &&
				strings.Contains(e.Note, "Deployment chat-server") && strings.Contains(e.Note, "Service chat-server") &&
				strings.Contains(e.Note, "Secret chat-vapid") {
				return nil
			}
		}
		var notes []string
		for _, e := range events.Items {
			notes = append(notes, e.Reason+": "+e.Note)
		}
		return fmt.Errorf("events %q, none Created for the KezChat naming its server's Deployment and Service and its VAPID Secret", notes)
	})
}

func TestConditionsFollowTheWorkloads(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{
		chatv1.ConditionReady: "False", chatv1.ConditionProgressing: "True",
		chatv1.ConditionServerReady: "False", chatv1.ConditionNATSReady: "False", chatv1.ConditionSigServerReady: "False",
	})
	if kc.Status.Server == nil || kc.Status.Server.Replicas != 1 || kc.Status.Server.ReadyReplicas != 0 {
		t.Errorf("server counts %+v", kc.Status.Server)
	}

	markDeploymentReady(t, ns, "chat-server")
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{
		chatv1.ConditionServerReady: "True", chatv1.ConditionNATSReady: "False", chatv1.ConditionReady: "False",
	})
	markStatefulSetReady(t, ns, "chat-nats")
	markDeploymentReady(t, ns, "chat-sig-server")
	kc = waitForConditions(t, ns, readyConditions)
	if kc.Status.Server.ReadyReplicas != 1 || kc.Status.NATS.ReadyReplicas != 1 || kc.Status.SigServer.ReadyReplicas != 1 {
		t.Errorf("ready counts %+v %+v %+v", kc.Status.Server, kc.Status.NATS, kc.Status.SigServer)
	}
	for _, c := range kc.Status.Conditions {
		if c.ObservedGeneration != kc.Generation {
			t.Errorf("%s observedGeneration %d, want %d", c.Type, c.ObservedGeneration, kc.Generation)
		}
	}

	// A rollout stuck past its deadline degrades the instance.
	eventually(t, waitTimeout, "failing the server rollout", func() error {
		d, err := get[appsv1.Deployment](ns, "chat-server")
		if err != nil {
			return err
		}
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
			Reason: "ProgressDeadlineExceeded", Message: "ReplicaSet has timed out progressing"}}
		return k8s.Status().Update(ctx, d)
	})
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{
		chatv1.ConditionReady: "False", chatv1.ConditionDegraded: "True", chatv1.ConditionServerReady: "False",
	})
}

// A chat server that answers its readiness probe 507 storage_full (the
// kubelet records it in an Unhealthy event of the pod) degrades the
// KezChat with the StorageFull condition, until it is ready again.
func TestAFullServerVolumeIsAConditionAndAnEvent(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	markAllReady(t, ns)
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionReady: "True", chatv1.ConditionStorageFull: "False"})

	now := metav1.Now()
	probe := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "chat-server-5d4f-x7k2p.readiness", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "chat-server-5d4f-x7k2p"},
		Reason:         "Unhealthy", Type: corev1.EventTypeWarning, Count: 3,
		Message:        "Readiness probe failed: HTTP probe failed with statuscode: 507",
		FirstTimestamp: now, LastTimestamp: now, Source: corev1.EventSource{Component: "kubelet"},
	}
	if err := k8s.Create(ctx, probe); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "the server going unready", func() error {
		d, err := get[appsv1.Deployment](ns, "chat-server")
		if err != nil {
			return err
		}
		d.Status.ReadyReplicas, d.Status.AvailableReplicas, d.Status.UnavailableReplicas = 0, 0, 1
		return k8s.Status().Update(ctx, d)
	})
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{
		chatv1.ConditionStorageFull: "True", chatv1.ConditionDegraded: "True", chatv1.ConditionReady: "False"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded); c.Reason != "StorageFull" ||
		!strings.Contains(c.Message, "spec.server.storage.size") {
		t.Errorf("Degraded %+v, want reason StorageFull naming the volume", c)
	}
	eventually(t, waitTimeout, "a StorageFull event of the KezChat", func() error {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == "StorageFull" && e.Regarding.Kind == "KezChat" {
				return nil
			}
		}
		return fmt.Errorf("%d events, none StorageFull", len(events.Items))
	})

	markDeploymentReady(t, ns, "chat-server")
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionStorageFull: "False", chatv1.ConditionReady: "True"})
}

func TestDeletedOrEditedChildrenArePutBack(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	svc := waitFor[corev1.Service](t, ns, "chat-server", nil)
	if err := k8s.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitFor[corev1.Service](t, ns, "chat-server", func(s *corev1.Service) error {
		if s.UID == svc.UID {
			return errors.New("still the deleted one")
		}
		return nil
	})

	// Hand edits, as `kubectl edit` makes them (an update by another
	// field manager), are undone.
	d := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	d.Spec.Template.Spec.Containers[0].Image = "evil.example/backdoor:1"
	if err := k8s.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "registry.example/kezchat:test" {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
	cm := waitFor[corev1.ConfigMap](t, ns, "chat-nats-config", nil)
	want := cm.Data["nats.conf"]
	cm.Data["nats.conf"] = "port: 1\n"
	if err := k8s.Update(ctx, cm, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	waitFor[corev1.ConfigMap](t, ns, "chat-nats-config", func(cm *corev1.ConfigMap) error {
		if cm.Data["nats.conf"] != want {
			return errors.New("nats.conf still edited")
		}
		return nil
	})
}

// The operator applies a child only when what it owns there differs from
// what it would apply; every way of changing an owned field shows as such a
// difference, however it was made, and is put back. A field it does not
// own is someone else's: changing it costs no apply.
func TestOwnedFieldEditsAreUndoneAndOthersKept(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	kc := createKezChat(t, ns)
	want := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	wantArgs := want.Spec.Template.Spec.Containers[0].Args

	undone := []struct {
		name string
		// edit is made by an update, as kubectl edit makes it.
		edit func(*appsv1.Deployment)
		// force sets replicas to 3 instead, by another field manager's
		// server-side apply that takes the field over.
		force bool
	}{
		{name: "image changed", edit: func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "evil.example/backdoor:1" }},
		{name: "argument removed", edit: func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Args = d.Spec.Template.Spec.Containers[0].Args[1:]
		}},
		{name: "label removed", edit: func(d *appsv1.Deployment) { delete(d.Labels, "app.kubernetes.io/part-of") }},
		{name: "replicas taken over by another applier", force: true},
	}
	for _, tc := range undone {
		d, err := get[appsv1.Deployment](ns, "chat-server")
		if err != nil {
			t.Fatal(err)
		}
		if tc.force {
			u := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "apps/v1", "kind": "Deployment",
				"metadata": map[string]any{"name": d.Name, "namespace": ns},
				"spec":     map[string]any{"replicas": int64(3)},
			}}
			if err := k8s.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("autoscaler"), client.ForceOwnership); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		} else {
			tc.edit(d)
			if err := k8s.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
			c := d.Spec.Template.Spec.Containers[0]
			switch {
			case c.Image != want.Spec.Template.Spec.Containers[0].Image:
				return fmt.Errorf("%s: image %s", tc.name, c.Image)
			case !slices.Equal(c.Args, wantArgs):
				return fmt.Errorf("%s: args %q", tc.name, c.Args)
			case d.Labels["app.kubernetes.io/part-of"] != "kez-chat":
				return fmt.Errorf("%s: labels %v", tc.name, d.Labels)
			case ptr.Deref(d.Spec.Replicas, 0) != 1:
				return fmt.Errorf("%s: replicas %d", tc.name, ptr.Deref(d.Spec.Replicas, 0))
			}
			return nil
		})
	}

	// Someone else's annotation stays, and the reconciles it wakes send
	// nothing.
	d, err := get[appsv1.Deployment](ns, "chat-server")
	if err != nil {
		t.Fatal(err)
	}
	mark, emitted := mgr.requests.mark(), mgr.events.n.Load()
	metav1.SetMetaDataAnnotation(&d.ObjectMeta, "example.com/owner-team", "chat-ops")
	if err := k8s.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "the operator's cache to see the annotation", func() error {
		var cached appsv1.Deployment
		if err := mgr.reconciler.Client.Get(ctx, client.ObjectKeyFromObject(d), &cached); err != nil {
			return err
		}
		if cached.Annotations["example.com/owner-team"] == "" {
			return errors.New("not yet")
		}
		return nil
	})
	mgr.reconcileNow(t, kc)
	for _, r := range mgr.requests.since(mark) {
		// The recorder may still be sending the events of the edits
		// above; whether this reconcile made any is counted below.
		if !strings.HasPrefix(r, "GET ") && !strings.Contains(r, "/apis/events.k8s.io/") {
			t.Errorf("someone else's annotation made the operator send %s", r)
		}
	}
	if n := mgr.events.n.Load() - emitted; n != 0 {
		t.Errorf("someone else's annotation made the operator emit %d events", n)
	}
	if got, err := get[appsv1.Deployment](ns, "chat-server"); err != nil || got.Annotations["example.com/owner-team"] != "chat-ops" {
		t.Errorf("the annotation went: %v %v", got.Annotations, err)
	}
}

func TestSpecChangesRollTheWorkloads(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	before := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	natsBefore := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	markAllReady(t, ns)
	waitForConditions(t, ns, readyConditions)

	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Image = "registry.example/kezchat:v2"
		kc.Spec.Server.Env = []corev1.EnvVar{{Name: "KEZ_MAX_PENDING", Value: "500"}}
		kc.Spec.Server.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("300Mi")}}
		kc.Spec.NATS.WebSocket = true
	})
	d := waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Generation == before.Generation {
			return errors.New("spec unchanged")
		}
		return nil
	})
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example/kezchat:v2" {
		t.Errorf("image %s", c.Image)
	}
	if v, _ := envValue(c, "KEZ_MAX_PENDING"); v != "500" {
		t.Errorf("env KEZ_MAX_PENDING=%q", v)
	}
	if c.Resources.Limits.Memory().Cmp(resource.MustParse("300Mi")) != 0 {
		t.Errorf("resources %+v", c.Resources)
	}
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", func(s *appsv1.StatefulSet) error {
		if s.Spec.Template.Annotations[configHashAnnotation] == natsBefore.Spec.Template.Annotations[configHashAnnotation] {
			return errors.New("config hash unchanged")
		}
		return nil
	})
	if len(sts.Spec.Template.Spec.Containers[0].Ports) != 4 {
		t.Errorf("websocket on, NATS ports %+v", sts.Spec.Template.Spec.Containers[0].Ports)
	}
	// The new spec is rolling out until the workloads say otherwise.
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionReady: "False", chatv1.ConditionProgressing: "True"})
	markAllReady(t, ns)
	waitForConditions(t, ns, readyConditions)
}

func TestVAPIDSecretIsMadeOnceAndRotatedOnlyByAnnotation(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	kc := createKezChat(t, ns)
	secret := waitFor[corev1.Secret](t, ns, "chat-vapid", nil)
	natsSecret := waitFor[corev1.Secret](t, ns, "chat-nats-auth", nil)
	d := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	hash := d.Spec.Template.Annotations[configHashAnnotation]

	for range 50 {
		mgr.reconcileNow(t, kc)
	}
	mgr.stop()
	mgr = startManager(t, ns)
	mgr.reconcileNow(t, kc)
	again, err := get[corev1.Secret](ns, "chat-vapid")
	if err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != secret.ResourceVersion || string(again.Data["private-key.pem"]) != string(secret.Data["private-key.pem"]) {
		t.Fatal("the VAPID Secret changed across 50 reconciles and a manager restart")
	}
	if n, _ := get[corev1.Secret](ns, "chat-nats-auth"); n.ResourceVersion != natsSecret.ResourceVersion {
		t.Fatal("the NATS auth Secret changed across 50 reconciles and a manager restart")
	}

	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		metav1.SetMetaDataAnnotation(&kc.ObjectMeta, chatv1.RotateVAPIDAnnotation, "2026-11-25")
	})
	rotated := waitFor[corev1.Secret](t, ns, "chat-vapid", func(s *corev1.Secret) error {
		if string(s.Data["private-key.pem"]) == string(secret.Data["private-key.pem"]) {
			return errors.New("key not rotated")
		}
		return nil
	})
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Annotations[configHashAnnotation] == hash {
			return errors.New("server pods not rolled for the new key")
		}
		return nil
	})
	key, err := push.ParseKeyPEM(rotated.Data["private-key.pem"])
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "status shows the new key", func() error {
		if got := getKezChat(t, ns).Status.VAPIDPublicKey; got != push.PublicKey(key) {
			return fmt.Errorf("status key %s", got)
		}
		return nil
	})
	// The same annotation value does not rotate again.
	for range 10 {
		mgr.reconcileNow(t, kc)
	}
	if s, _ := get[corev1.Secret](ns, "chat-vapid"); s.ResourceVersion != rotated.ResourceVersion {
		t.Error("the VAPID key rotated again for the same annotation value")
	}
}

func TestUserVAPIDSecretIsUsedAndNeverChanged(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	pemData, err := push.NewKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := push.ParseKeyPEM(pemData)
	user := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "my-vapid", Namespace: ns},
		Data:       map[string][]byte{"private-key.pem": pemData},
	}
	if err := k8s.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Push.SecretName = "my-vapid"
		kc.Annotations = map[string]string{chatv1.RotateVAPIDAnnotation: "please"}
	})
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "my-vapid" {
				return nil
			}
		}
		return errors.New("server does not mount my-vapid")
	})
	eventually(t, waitTimeout, "status shows the user's key", func() error {
		if got := getKezChat(t, ns).Status.VAPIDPublicKey; got != push.PublicKey(key) {
			return fmt.Errorf("status key %q", got)
		}
		return nil
	})
	after, _ := get[corev1.Secret](ns, "my-vapid")
	if after.ResourceVersion != user.ResourceVersion || len(after.OwnerReferences) > 0 || len(after.Labels) > 0 {
		t.Errorf("the user's Secret was changed: %+v", after.ObjectMeta)
	}
	if _, err := get[corev1.Secret](ns, "chat-vapid"); !apierrors.IsNotFound(err) {
		t.Errorf("a VAPID Secret was generated beside the user's (%v)", err)
	}

	// A missing Secret is the user's to fix, and says so.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Push.SecretName = "nope" })
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "True", chatv1.ConditionReady: "False"})
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded); c.Reason != ReasonVAPIDSecret || !strings.Contains(c.Message, "nope") {
		t.Errorf("Degraded %s: %s", c.Reason, c.Message)
	}
}

func TestInvalidKezChatsAreRefusedAtAdmission(t *testing.T) {
	ns := testNamespace(t)
	tests := []struct {
		name   string
		mutate func(*chatv1.KezChat)
		want   string
	}{
		{"replicas over one on SQLite", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store, kc.Spec.Server.Replicas = chatv1.StoreSQLite, ptr.To[int32](2)
		}, "needs the jetstream store"},
		{"jetstream without NATS", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store = chatv1.StoreJetStream
			kc.Spec.NATS.Enabled = ptr.To(false)
		}, "needs nats.enabled"},
		{"replicas, so jetstream, without NATS", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Replicas = ptr.To[int32](3)
			kc.Spec.NATS.Enabled = ptr.To(false)
		}, "needs nats.enabled"},
		{"too many server replicas", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store, kc.Spec.Server.Replicas = chatv1.StoreJetStream, ptr.To[int32](21)
		}, "spec.server.replicas"},
		{"two NATS replicas", func(kc *chatv1.KezChat) { kc.Spec.NATS.Replicas = ptr.To[int32](2) }, "spec.nats.replicas"},
		{"two sig-servers", func(kc *chatv1.KezChat) { kc.Spec.SigServer.Replicas = ptr.To[int32](2) }, "spec.sigServer.replicas"},
		{"domain not a DNS name", func(kc *chatv1.KezChat) { kc.Spec.Domain = "Chat_Example" }, "spec.domain"},
		{"no domain", func(kc *chatv1.KezChat) { kc.Spec.Domain = "" }, "spec.domain"},
		{"retention under a minute", func(kc *chatv1.KezChat) { kc.Spec.Server.Retention = &metav1.Duration{Duration: 10e9} }, "retention must be at least 1m"},
		{"unknown store", func(kc *chatv1.KezChat) { kc.Spec.Server.Store = "postgres" }, "spec.server.store"},
		{"push subject not a URL", func(kc *chatv1.KezChat) { kc.Spec.Push.Subject = "ftp://x" }, "spec.push.subject"},
		{"a trusted proxy not a CIDR", func(kc *chatv1.KezChat) { kc.Spec.Ingress.TrustedProxies = []string{"10.0.0.0/8", "ingress"} }, "trustedProxies must be CIDRs"},
		{"an ingress namespace not a name", func(kc *chatv1.KezChat) { kc.Spec.Ingress.ControllerNamespace = "Ingress_NGINX" }, "spec.ingress.controllerNamespace"},
		{"a name with a dot", func(kc *chatv1.KezChat) { kc.Name = "chat.example" }, "metadata.name must be at most 47 characters"},
		{"a name too long for its children", func(kc *chatv1.KezChat) { kc.Name = strings.Repeat("c", chatv1.MaxNameLength+1) }, "metadata.name must be at most 47"},
		{"a name starting with a digit (no Service name)", func(kc *chatv1.KezChat) { kc.Name = "1chat" }, "metadata.name must be"},
		{"attachments under 1Ki", func(kc *chatv1.KezChat) { kc.Spec.Attachments.MaxSize = ptr.To(resource.MustParse("512")) }, "attachments.maxSize must be at least 1Ki"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bad-%d", i), Namespace: ns},
				Spec: chatv1.KezChatSpec{Domain: "chat.example.org"}}
			tt.mutate(kc)
			err := k8s.Create(ctx, kc)
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want Invalid mentioning %q", err, tt.want)
			}
		})
	}

	// The longest name admitted makes valid children.
	longest := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("c", chatv1.MaxNameLength), Namespace: ns},
		Spec: chatv1.KezChatSpec{Domain: "chat.example.org"}}
	if err := k8s.Create(ctx, longest); err != nil {
		t.Errorf("a name of %d characters: %v", chatv1.MaxNameLength, err)
	}

	// Rules on changes.
	createKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.StorageClassName = ptr.To("fast") })
	changes := []struct {
		name   string
		mutate func(*chatv1.KezChat)
		want   string
	}{
		{"domain", func(kc *chatv1.KezChat) { kc.Spec.Domain = "other.example.org" }, "domain is immutable"},
		{"NATS storage class", func(kc *chatv1.KezChat) { kc.Spec.NATS.Storage.StorageClassName = ptr.To("slow") }, "storageClassName is immutable"},
		{"server storage class", func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.StorageClassName = ptr.To("slow") }, "storageClassName is immutable"},
		{"server storage class removed", func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.StorageClassName = nil }, "storageClassName is immutable"},
		{"server storage, shrunk", func(kc *chatv1.KezChat) { kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("1023Mi")) }, "storage.size cannot shrink below 1Gi"},
		{"sig-server storage, shrunk", func(kc *chatv1.KezChat) { kc.Spec.SigServer.Storage.Size = ptr.To(resource.MustParse("512Mi")) }, "storage.size cannot shrink below 1Gi"},
		{"NATS storage, shrunk", func(kc *chatv1.KezChat) { kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("0.5Gi")) }, "storage.size cannot shrink below 1Gi"},
		{"store, by scaling a SQLite chat past one replica", func(kc *chatv1.KezChat) {
			kc.Spec.Server.Store, kc.Spec.Server.Replicas = "", ptr.To[int32](2)
		}, "the store cannot change"},
		{"store, explicitly", func(kc *chatv1.KezChat) { kc.Spec.Server.Store = chatv1.StoreJetStream }, "the store cannot change"},
	}
	for _, tt := range changes {
		t.Run("changing "+tt.name, func(t *testing.T) {
			kc := getKezChat(t, ns)
			tt.mutate(kc)
			err := k8s.Update(ctx, kc)
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want Invalid mentioning %q", err, tt.want)
			}
		})
	}
	// On SQLite, NATS holds no data, so its replicas may change.
	kc := getKezChat(t, ns)
	kc.Spec.NATS.Replicas = ptr.To[int32](3)
	if err := k8s.Update(ctx, kc); err != nil {
		t.Errorf("changing NATS replicas of a SQLite chat: %v", err)
	}
	// On JetStream they hold every message, so they may not.
	js := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "js", Namespace: ns},
		Spec: chatv1.KezChatSpec{Domain: "chat.example.org", Server: chatv1.ServerSpec{Store: chatv1.StoreJetStream}}}
	if err := k8s.Create(ctx, js); err != nil {
		t.Fatal(err)
	}
	for _, replicas := range []*int32{ptr.To[int32](3), nil} {
		if replicas == nil { // 3 to 1, on a chat created with 3
			js = &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "js3", Namespace: ns},
				Spec: chatv1.KezChatSpec{Domain: "chat.example.org", Server: chatv1.ServerSpec{Store: chatv1.StoreJetStream},
					NATS: chatv1.NATSSpec{Replicas: ptr.To[int32](3)}}}
			if err := k8s.Create(ctx, js); err != nil {
				t.Fatal(err)
			}
			replicas = ptr.To[int32](1)
		}
		js.Spec.NATS.Replicas = replicas
		if err := k8s.Update(ctx, js); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "nats.replicas cannot change on the jetstream store") ||
			!strings.Contains(err.Error(), "restore the backup into a new KezChat") {
			t.Errorf("NATS replicas to %d on JetStream: got %v, want Invalid saying how to do it by hand", *replicas, err)
		}
	}

	// The same size written another way is no shrink.
	kc = getKezChat(t, ns)
	kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("1024Mi"))
	if err := k8s.Update(ctx, kc); err != nil {
		t.Errorf("1Gi as 1024Mi: %v", err)
	}
	// Growing the server's and NATS's volumes is allowed.
	kc = getKezChat(t, ns)
	kc.Spec.Server.Storage.Size = ptr.To(resource.MustParse("20Gi"))
	kc.Spec.NATS.Storage.Size = ptr.To(resource.MustParse("20Gi"))
	if err := k8s.Update(ctx, kc); err != nil {
		t.Errorf("growing the server and NATS volumes: %v", err)
	}
	// Defaults are filled in.
	kc = getKezChat(t, ns)
	if kc.Spec.Server.StoreKind() != chatv1.StoreSQLite || ptr.Deref(kc.Spec.Server.Replicas, 0) != 1 || !ptr.Deref(kc.Spec.NATS.Enabled, false) ||
		kc.Spec.NATS.Storage.Size == nil || kc.Spec.Server.Retention == nil {
		t.Errorf("defaults not applied: %+v", kc.Spec)
	}
	// More than one replica, and no store named, means JetStream; such a
	// chat scales freely.
	scaled := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "scaled", Namespace: ns},
		Spec: chatv1.KezChatSpec{Domain: "chat.example.org", Server: chatv1.ServerSpec{Replicas: ptr.To[int32](3)}}}
	if err := k8s.Create(ctx, scaled); err != nil {
		t.Fatalf("three replicas without a store: %v", err)
	}
	if scaled.Spec.Server.StoreKind() != chatv1.StoreJetStream {
		t.Errorf("three replicas run on %s", scaled.Spec.Server.StoreKind())
	}
	scaled.Spec.Server.Store = chatv1.StoreJetStream
	scaled.Spec.Server.Replicas = ptr.To[int32](1)
	if err := k8s.Update(ctx, scaled); err != nil {
		t.Errorf("naming the store in effect and scaling down: %v", err)
	}
}

func TestPausedKezChatIsLeftAlone(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	kc := createKezChat(t, ns)
	waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		metav1.SetMetaDataAnnotation(&kc.ObjectMeta, chatv1.ReconcileAnnotation, chatv1.ReconcilePaused)
	})
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Image = "registry.example/kezchat:v2" })
	svc := waitFor[corev1.Service](t, ns, "chat-server", nil)
	if err := k8s.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	mgr.reconcileNow(t, kc)
	paused := waitForEvent(t, ns, ReasonPaused)
	if !strings.Contains(paused.Note, chatv1.ReconcileAnnotation) {
		t.Errorf("Paused event %q does not name the annotation", paused.Note)
	}
	if c := meta.FindStatusCondition(getKezChat(t, ns).Status.Conditions, chatv1.ConditionPaused); c == nil || c.Status != "True" {
		t.Errorf("Paused condition %+v, want True", c)
	}
	if d, _ := get[appsv1.Deployment](ns, "chat-server"); d.Spec.Template.Spec.Containers[0].Image != "registry.example/kezchat:test" {
		t.Error("a paused KezChat's Deployment changed")
	}
	if _, err := get[corev1.Service](ns, "chat-server"); !apierrors.IsNotFound(err) {
		t.Errorf("a paused KezChat's deleted Service came back (%v)", err)
	}

	updateKezChat(t, ns, func(kc *chatv1.KezChat) { delete(kc.Annotations, chatv1.ReconcileAnnotation) })
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Spec.Containers[0].Image != "registry.example/kezchat:v2" {
			return errors.New("not yet updated")
		}
		return nil
	})
	waitFor[corev1.Service](t, ns, "chat-server", nil)
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionPaused: "False"})
	waitForEvent(t, ns, ReasonResumed)
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	pauses := 0
	for _, e := range events.Items {
		if e.Reason == ReasonPaused {
			pauses++
			if e.DeprecatedCount > 1 || e.Series != nil {
				pauses++
			}
		}
	}
	if pauses != 1 {
		t.Errorf("the pause was said %d times, want once", pauses)
	}
}

// waitForEvent waits for an event of the KezChat with reason.
func waitForEvent(t *testing.T, ns, reason string) eventsv1.Event {
	t.Helper()
	var found eventsv1.Event
	eventually(t, waitTimeout, "a "+reason+" event of the KezChat", func() error {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == reason && e.Regarding.Kind == "KezChat" {
				found = e
				return nil
			}
		}
		return fmt.Errorf("%d events, none %s", len(events.Items), reason)
	})
	return found
}

func TestDisablingAComponentRemovesItsWorkloadButKeepsItsData(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Store, kc.Spec.Server.Replicas = chatv1.StoreJetStream, ptr.To[int32](3)
		kc.Spec.NATS.Replicas = ptr.To[int32](3)
	})
	waitFor[policyv1.PodDisruptionBudget](t, ns, "chat-server", nil)
	waitFor[policyv1.PodDisruptionBudget](t, ns, "chat-nats", nil)
	waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-sig-server-data", nil)

	updateKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Replicas = ptr.To[int32](1)
		kc.Spec.SigServer.Enabled = ptr.To(false)
		kc.Spec.Ingress.Enabled = ptr.To(false)
	})
	eventually(t, waitTimeout, "unwanted children deleted", func() error {
		for _, obj := range []client.Object{
			&policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: "chat-server"}},
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "chat-sig-server"}},
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "chat-sig-server"}},
			&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: "chat"}},
		} {
			err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: obj.GetName()}, obj)
			if err == nil && obj.GetDeletionTimestamp().IsZero() {
				return fmt.Errorf("%T %s still there", obj, obj.GetName())
			}
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		return nil
	})
	if _, err := get[corev1.PersistentVolumeClaim](ns, "chat-sig-server-data"); err != nil {
		t.Errorf("the sig-server's volume went with it: %v", err)
	}
	if _, err := get[policyv1.PodDisruptionBudget](ns, "chat-nats"); err != nil {
		t.Errorf("the NATS budget went too: %v", err)
	}
	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionSigServerReady: "absent"})
	if kc.Status.SigServer != nil {
		t.Errorf("sig-server counts %+v for a disabled sig-server", kc.Status.SigServer)
	}
}

// An operator started again finds a steady KezChat's children as it
// left them, from its fresh cache alone: its reconcile sends nothing.
func TestRestartedOperatorSendsNothingForASteadyKezChat(t *testing.T) {
	ns := testNamespace(t)
	first := startManager(t, ns)
	kc := createKezChat(t, ns)
	waitFor[appsv1.Deployment](t, ns, "chat-sig-server", nil)
	markAllReady(t, ns)
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionReady: "True"})
	first.reconcileNow(t, kc)
	first.stop()

	again := startManager(t, ns)
	mark := again.requests.mark()
	again.reconcileNow(t, kc)
	if sent := again.requests.since(mark); len(sent) > 0 {
		t.Errorf("the restarted operator's reconcile of a steady KezChat sent %d requests: %q", len(sent), sent)
	}
}

// A steady KezChat costs the API server nothing: twenty reconciles on top
// of whatever the watches cause meanwhile send no request at all, neither
// a write nor a read, since every child already holds what the operator
// applied and the status what it observes.
func TestSteadyKezChatCostsNoAPIRequests(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	kc := createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Server.Store, kc.Spec.Server.Replicas = chatv1.StoreJetStream, ptr.To[int32](2)
		kc.Spec.Ingress.TLSSecretName = "tls"
	})
	waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	markAllReady(t, ns)
	waitForConditions(t, ns, readyConditions)
	// The manager's own reconciles of the updates above end once they
	// stop sending.
	eventually(t, waitTimeout, "the manager to settle", func() error {
		mark := mgr.requests.mark()
		mgr.reconcileNow(t, kc)
		if sent := mgr.requests.since(mark); len(sent) > 0 {
			return fmt.Errorf("a reconcile sent %q", sent)
		}
		return nil
	})

	mark := mgr.requests.mark()
	for range 20 {
		mgr.reconcileNow(t, kc)
	}
	if sent := mgr.requests.since(mark); len(sent) > 0 {
		t.Errorf("20 reconciles of a steady KezChat sent %d requests: %q", len(sent), sent)
	}
}
