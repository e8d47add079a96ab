package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// A chat server without room to write answers its readiness probe 507
// storage_full; the kubelet says so in an Unhealthy event of the pod.
const (
	probeStorageFull = "statuscode: 507"
	// storageEventAge is how recent such an event must be to count: the
	// kubelet probes every 5 s while the pod stays unready.
	storageEventAge = 2 * time.Minute
)

// serverStorageFull reads, while kc's chat server is not ready, the
// kubelet's recent readiness failures of its pods, and says which answered
// storage_full ("" for none). The events are read from the API server
// only then (not cached: a cluster's events are many and churn).
func (r *KezChatReconciler) serverStorageFull(ctx context.Context, kc *chatv1.KezChat, now time.Time) (string, error) {
	var events corev1.EventList
	err := r.APIReader.List(ctx, &events, client.InNamespace(kc.Namespace), client.Limit(200),
		client.MatchingFieldsSelector{Selector: fields.SelectorFromSet(fields.Set{"involvedObject.kind": "Pod", "reason": "Unhealthy"})})
	if err != nil {
		return "", fmt.Errorf("reading the chat server pods' events: %w", err)
	}
	prefix := namesOf(kc).server() + "-"
	for _, ev := range events.Items {
		if !strings.HasPrefix(ev.InvolvedObject.Name, prefix) || !strings.Contains(ev.Message, probeStorageFull) {
			continue
		}
		if seen := lastSeen(&ev); now.Sub(seen) > storageEventAge {
			continue
		}
		where := "its volume (spec.server.storage.size)"
		if kc.Spec.Server.StoreKind() == chatv1.StoreJetStream {
			where = "NATS's volume (spec.nats.storage.size)"
		}
		return fmt.Sprintf("pod %s answers 507 storage_full: %s has no room for messages; grow it, or wait for messages to be read or to expire",
			ev.InvolvedObject.Name, where), nil
	}
	return "", nil
}

// lastSeen is when an event last happened, whichever way its reporter
// records it.
func lastSeen(ev *corev1.Event) time.Time {
	switch {
	case ev.Series != nil && !ev.Series.LastObservedTime.IsZero():
		return ev.Series.LastObservedTime.Time
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	default:
		return ev.EventTime.Time
	}
}
