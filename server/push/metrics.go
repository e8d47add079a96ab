package push

import "github.com/prometheus/client_golang/prometheus"

// Outcomes of a push, the label values of kezchat_push_notifications_total.
const (
	outcomeSent    = "sent"    // the push service accepted it
	outcomePruned  = "pruned"  // 404 or 410: the subscription is gone
	outcomeRetried = "retried" // one more attempt after a 429, 5xx or network error
	outcomeFailed  = "failed"  // given up on; the subscription is kept
	outcomeDropped = "dropped" // never sent: the queue was full or the sender closing
	outcomeOnline  = "online"  // not needed: another replica streams the recipient
)

type metrics struct {
	sent, pruned, retried, failed, dropped, online prometheus.Counter
	subscriptionsPruned                            prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, queueDepth func() int) *metrics {
	outcomes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kezchat_push_notifications_total",
		Help: "Web Push notifications by outcome: sent, pruned, retried, failed, dropped, online.",
	}, []string{"outcome"})
	m := &metrics{
		// Creating every series up front exports them at zero.
		sent:    outcomes.WithLabelValues(outcomeSent),
		pruned:  outcomes.WithLabelValues(outcomePruned),
		retried: outcomes.WithLabelValues(outcomeRetried),
		failed:  outcomes.WithLabelValues(outcomeFailed),
		dropped: outcomes.WithLabelValues(outcomeDropped),
		online:  outcomes.WithLabelValues(outcomeOnline),
		subscriptionsPruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kezchat_push_subscriptions_pruned_total",
			Help: "Push subscriptions deleted because their push service answered 404 or 410.",
		}),
	}
	if reg != nil {
		reg.MustRegister(outcomes, m.subscriptionsPruned,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kezchat_push_queue_depth",
				Help: "Push notices waiting for a sender worker.",
			}, func() float64 { return float64(queueDepth()) }))
	}
	return m
}
