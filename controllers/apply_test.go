package controllers

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// applied returns obj as the API server holds it after the operator
// applied it: its managed fields name exactly the fields obj sets, under
// the operator's field manager.
func applied(t testing.TB, r *KezChatReconciler, obj client.Object) (client.Object, map[string]any) {
	t.Helper()
	gvk, err := apiutil.GVKForObject(obj, r.Scheme)
	if err != nil {
		t.Fatal(err)
	}
	content, err := r.applyConfiguration(obj, gvk)
	if err != nil {
		t.Fatal(err)
	}
	typed, err := r.typeConverter().ObjectToTyped(&unstructured.Unstructured{Object: content})
	if err != nil {
		t.Fatal(err)
	}
	set, err := typed.ToFieldSet()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := set.Difference(identityFields).ToJSON()
	if err != nil {
		t.Fatal(err)
	}
	// The cache gives objects their kind.
	live := obj.DeepCopyObject().(client.Object)
	live.GetObjectKind().SetGroupVersionKind(gvk)
	live.SetManagedFields([]metav1.ManagedFieldsEntry{
		{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{}}`)}},
		{Manager: FieldOwner, Operation: metav1.ManagedFieldsOperationApply, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: raw}},
	})
	// As the cache holds it.
	if _, err := ownManagedFieldsOnly(live); err != nil {
		t.Fatal(err)
	}
	return live, content
}

// BenchmarkUnchangedChild is what deciding not to apply costs the
// operator in CPU, per child and reconcile, for every child of a default
// KezChat: compared field by field with what the cache holds (a child
// seen at a new version), and remembered (the version the operator last
// found or left it at).
//
//	go test -run '^$' -bench UnchangedChild ./controllers/
func BenchmarkUnchangedChild(b *testing.B) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		b.Fatal(err)
	}
	r := &KezChatReconciler{Scheme: scheme}
	kc := newKezChat()
	type child struct {
		obj, live client.Object
		desired   map[string]any
		key       appliedKey
	}
	var children []child
	for _, obj := range desiredObjects(kc, testInputs) {
		live, desired := applied(b, r, obj)
		live.SetResourceVersion("42")
		key := appliedKey{client.ObjectKeyFromObject(kc), live.GetObjectKind().GroupVersionKind().GroupKind(), obj.GetName()}
		digest, err := r.desiredDigest(obj)
		if err != nil {
			b.Fatal(err)
		}
		r.applied.record(key, "42", digest)
		children = append(children, child{obj, live, desired, key})
	}
	b.Run("compared", func(b *testing.B) {
		for range b.N {
			for _, c := range children {
				if same, err := r.ownsAsDesired(c.live, c.desired); err != nil || !same {
					b.Fatalf("%s: same %v, %v", c.live.GetName(), same, err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(len(children)), "µs/child")
	})
	b.Run("remembered", func(b *testing.B) {
		for range b.N {
			for _, c := range children {
				digest, err := r.desiredDigest(c.obj)
				if err != nil || !r.applied.matches(c.key, c.live.GetResourceVersion(), digest) {
					b.Fatalf("%s: not remembered, %v", c.live.GetName(), err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(len(children)), "µs/child")
	})
}

func TestListNoteNamesWhatFitsAnEventAndCountsTheRest(t *testing.T) {
	many := make([]string, 100)
	for i := range many {
		many[i] = fmt.Sprintf("NetworkPolicy a-rather-long-kezchat-name-of-forty-chars-%02d", i)
	}
	tests := []struct {
		name  string
		names []string
		want  string
	}{
		{"one", []string{"Deployment chat-server"}, "Deployment chat-server"},
		{"two", []string{"Deployment chat-server", "Service chat"}, "Deployment chat-server, Service chat"},
		{"many", many, strings.Join(many[:15], ", ") + " and 85 more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := listNote(tc.names)
			if got != tc.want {
				t.Errorf("listNote = %q, want %q", got, tc.want)
			}
			if len("created "+got) > 1024 {
				t.Errorf("%d bytes, more than an event's note may hold", len(got))
			}
		})
	}
}

// ownsAsDesired is what spares an apply: a child the operator left as it
// wants matches, whatever others or the API server's defaults added; any
// change to what the operator set, or to which fields it sets, does not.
func TestOwnsAsDesiredMatchesOnlyWhatApplyWouldLeaveAlone(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	r := &KezChatReconciler{Scheme: scheme}
	kc := newKezChat(func(kc *chatv1.KezChat) { kc.Spec.NATS.Enabled = ptr.To(true) })
	// find is the child of kind like and name.
	find := func(like client.Object, name string) client.Object {
		for _, o := range desiredObjects(kc, testInputs) {
			if reflect.TypeOf(o) == reflect.TypeOf(like) && o.GetName() == name {
				return o
			}
		}
		t.Fatalf("no %T %s", like, name)
		return nil
	}
	deployment, statefulSet := &appsv1.Deployment{}, &appsv1.StatefulSet{}
	tests := []struct {
		name  string
		kind  client.Object
		child string
		// live changes the object as the cache holds it; desired the
		// object the reconcile builds now.
		live, desired func(client.Object)
		want          bool
	}{
		{name: "as applied", kind: deployment, child: "chat-server", want: true},
		{name: "someone else's annotation", kind: deployment, child: "chat-server", want: true,
			live: func(o client.Object) { o.SetAnnotations(map[string]string{"example.com/team": "ops"}) }},
		{name: "defaults inside an atomic value", kind: statefulSet, child: "chat-nats", want: true, live: func(o client.Object) {
			sts := o.(*appsv1.StatefulSet)
			sts.Spec.VolumeClaimTemplates[0].Spec.VolumeMode = ptr.To(corev1.PersistentVolumeFilesystem)
			sts.Spec.VolumeClaimTemplates[0].Status.Phase = corev1.ClaimPending
		}},
		{name: "an owned value changed", kind: deployment, child: "chat-server", want: false,
			live: func(o client.Object) {
				o.(*appsv1.Deployment).Spec.Template.Spec.Containers[0].Image = "evil.example/x:1"
			}},
		{name: "a new desired value", kind: deployment, child: "chat-server", want: false,
			desired: func(o client.Object) { o.(*appsv1.Deployment).Spec.Replicas = ptr.To[int32](2) }},
		{name: "a field no longer set", kind: deployment, child: "chat-server", want: false,
			desired: func(o client.Object) { o.(*appsv1.Deployment).Spec.RevisionHistoryLimit = nil }},
		{name: "a field newly set", kind: deployment, child: "chat-server", want: false,
			desired: func(o client.Object) { o.SetAnnotations(map[string]string{"chat.kez.lat/new": "x"}) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := find(tc.kind, tc.child)
			live, _ := applied(t, r, obj)
			if tc.live != nil {
				tc.live(live)
			}
			// The informer may transform an object twice.
			if _, err := ownManagedFieldsOnly(live); err != nil {
				t.Fatal(err)
			}
			want := obj.DeepCopyObject().(client.Object)
			if tc.desired != nil {
				tc.desired(want)
			}
			gvk, err := apiutil.GVKForObject(want, scheme)
			if err != nil {
				t.Fatal(err)
			}
			content, err := r.applyConfiguration(want, gvk)
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.ownsAsDesired(live, content)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("ownsAsDesired = %v, want %v", got, tc.want)
			}
		})
	}
}
