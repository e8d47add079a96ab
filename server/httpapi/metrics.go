package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

type metrics struct {
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	authFailures  prometheus.Counter
	rateLimited   prometheus.Counter
	slowConsumers prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, svc *server.Service) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kezchat_http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kezchat_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests by route pattern (streams excluded).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
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
	}
	reg.MustRegister(m.requests, m.latency, m.authFailures, m.rateLimited, m.slowConsumers,
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

// instrument counts requests by the route pattern they matched (never the
// raw path, which would let clients mint label values).
func (s *Server) instrument(next http.Handler) http.Handler {
	return instrument(next, s.metrics.requests, s.metrics.latency, "GET /v1/inbox/{handle}/stream")
}

// instrument counts next's requests and times them, but for the route
// untimed (a stream, whose duration says nothing).
func instrument(next http.Handler, requests *prometheus.CounterVec, latency *prometheus.HistogramVec, untimed string) http.Handler {
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
		requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		if route != untimed {
			latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}
	})
}
