package controllers

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// BenchmarkReconcile200KezChats measures one manager bringing up 200
// KezChats on a real API server: the time from the manager's start until
// every KezChat has a status for its spec (all children applied), and the
// manager's heap afterwards, holding its caches of about 3,000 children.
//
//	go test -run '^$' -bench Reconcile200 -benchtime 1x ./controllers/
func BenchmarkReconcile200KezChats(b *testing.B) {
	const count = 200
	for range b.N {
		b.StopTimer()
		ns := testNamespace(b)
		for i := range count {
			kc := &chatv1.KezChat{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("chat-%03d", i), Namespace: ns},
				Spec:       chatv1.KezChatSpec{Domain: fmt.Sprintf("chat-%03d.example.org", i)},
			}
			if err := k8s.Create(ctx, kc); err != nil {
				b.Fatal(err)
			}
		}
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)

		b.StartTimer()
		start := time.Now()
		mgr := startManager(b, ns)
		eventually(b, 10*time.Minute, "every KezChat reconciled", func() error {
			var list chatv1.KezChatList
			if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return err
			}
			done := 0
			for _, kc := range list.Items {
				if kc.Status.ObservedGeneration == kc.Generation && meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionReady) != nil {
					done++
				}
			}
			if done < count {
				return fmt.Errorf("%d of %d reconciled", done, count)
			}
			return nil
		})
		elapsed := time.Since(start)
		b.StopTimer()

		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(elapsed.Seconds(), "s/200-kezchats")
		b.ReportMetric(float64(after.HeapInuse-min(before.HeapInuse, after.HeapInuse))/(1<<20), "MiB-heap-added")
		b.ReportMetric(float64(after.HeapInuse)/(1<<20), "MiB-heap-total")
		b.ReportMetric(float64(after.Sys)/(1<<20), "MiB-sys")
		mgr.stop()
	}
}
