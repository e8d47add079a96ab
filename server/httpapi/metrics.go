package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

// requestMetrics count a daemon's HTTP requests by route and status and
// time them: the chat server's as kezchat_http_*, the sig-server's as
// kezsig_http_*.
type requestMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// untimed is the route whose duration says nothing (a stream).
	untimed string
}

// newRequestMetrics registers prefix_http_requests_total and
// prefix_http_request_duration_seconds with reg; what names the daemon in
// their help.
func newRequestMetrics(reg prometheus.Registerer, prefix, what, untimed string) *requestMetrics {
	timed := "Time to answer HTTP requests to the " + what + " by route pattern."
	if untimed != "" {
		timed = "Time to answer HTTP requests to the " + what + " by route pattern (" + untimed + " excluded)."
	}
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_http_requests_total",
			Help: "HTTP requests to the " + what + " by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prefix + "_http_request_duration_seconds",
			Help:    timed,
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		untimed: untimed,
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// instrument counts next's requests by the route pattern they matched
// (never the raw path, which would let clients mint label values), and
// times them but for the untimed route.
func (m *requestMetrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "none"
		}
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		if route != m.untimed {
			m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}
	})
}

type metrics struct {
	http          *requestMetrics
	authFailures  prometheus.Counter
	rateLimited   prometheus.Counter
	slowConsumers prometheus.Counter
	// deliveryLatency times a message from its POST's acceptance to its
	// frame on an open stream of the recipient, for messages this replica
	// accepted and streams it holds.
	deliveryLatency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, svc *server.Service) *metrics {
	m := &metrics{
		http: newRequestMetrics(reg, "kezchat", "chat server", "GET /v1/inbox/{handle}/stream"),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kezchat_auth_failures_total",
			Help: "Requests refused because their signature or auth did not prove the sender.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kezchat_rate_limited_total",
			Help: "Requests refused by a per-address rate limit.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kezchat_stream_slow_consumers_total",
			Help: "Streams disconnected because their reader fell behind.",
		}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kezchat_delivery_latency_seconds",
			Help:    "Time from accepting a message to writing it to an open stream of its recipient on the same replica (catch-up after a reconnect and other replicas' messages excluded).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	reg.MustRegister(m.authFailures, m.rateLimited, m.slowConsumers, m.deliveryLatency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kezchat_open_streams",
			Help: "Inbox streams open on this replica.",
		}, func() float64 { return float64(svc.OpenStreams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_messages_stored_total",
			Help: "Envelopes stored (retries of a stored message not counted).",
		}, func() float64 { return float64(svc.MessagesStored()) }),
	)
	return m
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
