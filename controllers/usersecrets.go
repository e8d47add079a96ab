package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// pushSecretIndex indexes KezChats by the user's VAPID Secret they name.
const pushSecretIndex = "spec.push.secretName"

// pushSecretOf is the index function: the Secret kc reads its VAPID key
// from, when a user's.
func pushSecretOf(obj client.Object) []string {
	kc, ok := obj.(*chatv1.KezChat)
	if !ok || !kc.Spec.Push.IsEnabled() || kc.Spec.Push.SecretName == "" {
		return nil
	}
	return []string{kc.Spec.Push.SecretName}
}

// secretNameOnly keeps of a Secret's metadata what the watch needs to find
// the KezChats naming it, so the cache of every Secret in the watched
// namespaces holds names, never data, labels or annotations.
func secretNameOnly(in any) (any, error) {
	m, ok := in.(*metav1.PartialObjectMetadata)
	if !ok {
		return in, nil
	}
	return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
	}}, nil
}

// userSecretSource watches the metadata of the Secrets in the operator's
// namespaces, through a cache of its own: the manager's holds only
// Secrets the operator made, and a user's VAPID Secret is not one. An edit
// of a Secret a KezChat names in spec.push.secretName queues that KezChat,
// so a new key takes effect at once.
func (r *KezChatReconciler) userSecretSource(mgr ctrl.Manager) (source.Source, error) {
	opts := cache.Options{
		HTTPClient:       mgr.GetHTTPClient(),
		Scheme:           mgr.GetScheme(),
		Mapper:           mgr.GetRESTMapper(),
		DefaultTransform: secretNameOnly,
	}
	if len(r.Namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range r.Namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	secrets, err := cache.New(mgr.GetConfig(), opts)
	if err != nil {
		return nil, fmt.Errorf("creating the cache of Secret names: %w", err)
	}
	if err := mgr.Add(secrets); err != nil {
		return nil, err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &chatv1.KezChat{}, pushSecretIndex, pushSecretOf); err != nil {
		return nil, fmt.Errorf("indexing KezChats by VAPID Secret: %w", err)
	}
	obj := &metav1.PartialObjectMetadata{}
	obj.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return source.Kind(secrets, obj, handler.TypedEnqueueRequestsFromMapFunc(r.kezChatsNamingSecret)), nil
}

// kezChatsNamingSecret is every KezChat that reads its VAPID key from s.
func (r *KezChatReconciler) kezChatsNamingSecret(ctx context.Context, s *metav1.PartialObjectMetadata) []reconcile.Request {
	var list chatv1.KezChatList
	if err := r.Client.List(ctx, &list, client.InNamespace(s.Namespace), client.MatchingFields{pushSecretIndex: s.Name}); err != nil {
		log.FromContext(ctx).Error(err, "listing the KezChats that name a Secret", "secret", s.Name, "namespace", s.Namespace)
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, kc := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: kc.Namespace, Name: kc.Name}})
	}
	return reqs
}
