package httpapi_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"kez.lat/chat/server/testutil"
)

// metricValue finds a metric by name and label values in the registry.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			return value(m), true
		}
	}
	return 0, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

func TestMetricsCountRequestsByRouteStreamsStoredMessagesAndLiveDeliveries(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	c, alice, bob := chatPair(t, srv)
	ctx := context.Background()
	if _, err := c.Send(ctx, alice, "bob", "hi"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Next(); err != nil {
		t.Fatal(err)
	}
	// The first message came by catch-up from the store, untimed; this one
	// live, timed from its POST to its frame.
	if _, err := c.Send(ctx, alice, "bob", "again"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Next(); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kezchat_http_requests_total", map[string]string{"route": "POST /v1/register", "code": "201"}, 2},
		{"kezchat_http_requests_total", map[string]string{"route": "POST /v1/messages", "code": "201"}, 2},
		{"kezchat_http_request_duration_seconds", map[string]string{"route": "POST /v1/messages"}, 2},
		{"kezchat_open_streams", nil, 1},
		{"kezchat_messages_stored_total", nil, 2},
		{"kezchat_delivery_latency_seconds", nil, 1},
	}
	for _, c := range checks {
		if got, ok := metricValue(t, srv.Metrics, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}
