package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// MaxKeyLogPage bounds the documents one GET /v1/keys/{primary_id}/log
// answers.
const MaxKeyLogPage = 100

// SigConfig is what the sig-server's HTTP layer needs beyond the
// KeyDirectory.
type SigConfig struct {
	// Version is reported by /v1/healthz.
	Version string
	// TrustedProxies are the networks whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// PublishLimiter limits POST /v1/keys per client address: anyone can
	// make a primary key, so the signature alone bounds nothing.
	PublishLimiter *server.RateLimiter
}

// SigServer is the HTTP face of a server.KeyDirectory: the sig-server.
type SigServer struct {
	cfg     SigConfig
	dir     *server.KeyDirectory
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *requestMetrics
	limited prometheus.Counter
}

// NewSigServer returns the sig-server's HTTP API over dir, registering its
// metrics with reg.
func NewSigServer(cfg SigConfig, dir *server.KeyDirectory, log *slog.Logger, reg prometheus.Registerer) *SigServer {
	s := &SigServer{
		cfg: cfg, dir: dir, log: log, mux: http.NewServeMux(),
		metrics: newRequestMetrics(reg, "kezsig", "sig-server", ""),
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kezsig_rate_limited_total",
			Help: "Publications refused by the per-address rate limit.",
		}),
	}
	reg.MustRegister(s.limited)
	s.mux.HandleFunc("GET /v1/healthz", s.healthz)
	s.mux.HandleFunc("GET /v1/readyz", s.readyz)
	s.mux.HandleFunc("POST /v1/keys", s.publish)
	s.mux.HandleFunc("GET /v1/keys/{primary_id}", s.latest)
	s.mux.HandleFunc("GET /v1/keys/{primary_id}/log", s.chain)
	s.mux.HandleFunc("/", s.noRoute)
	return s
}

// Handler is the whole sig-server API with its middleware.
func (s *SigServer) Handler() http.Handler {
	return s.metrics.instrument(recoverPanics(s.mux, s.log))
}

func (s *SigServer) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"service": "sig-server", "status": "ok", "version": s.cfg.Version})
}

func (s *SigServer) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.dir.Ready(ctx); err != nil {
		s.log.WarnContext(ctx, "not ready", "err", err)
		writeError(w, server.Errorf(server.CodeUnavailable, "the database is unavailable"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// KeyReceipt answers an accepted key document: what the next version's
// prev must name.
type KeyReceipt struct {
	PrimaryID string `json:"primary_id"`
	Version   uint64 `json:"version"`
	Hash      string `json:"hash"`
}

func (s *SigServer) publish(w http.ResponseWriter, r *http.Request) {
	if ok, wait := s.cfg.PublishLimiter.Allow(clientAddr(r, s.cfg.TrustedProxies)); !ok {
		s.limited.Inc()
		writeError(w, &server.Error{Code: server.CodeRateLimited, Message: "too many publications from this address", RetryAfter: wait})
		return
	}
	var doc signing.Signed
	if err := readJSON(w, r, server.MaxKeyDocument, &doc); err != nil {
		s.fail(w, r, err)
		return
	}
	d, replayed, err := s.dir.Publish(r.Context(), doc)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusCreated
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		status = http.StatusOK
	}
	writeJSON(w, status, KeyReceipt{PrimaryID: d.PrimaryID, Version: d.Version, Hash: signing.EncodeB64(d.Hash)})
}

func (s *SigServer) latest(w http.ResponseWriter, r *http.Request) {
	// Public, signed data; set before any answer, so that a web app of
	// another server reads a refusal's code too (unknown_identity).
	w.Header().Set("Access-Control-Allow-Origin", "*")
	d, err := s.dir.Latest(r.Context(), r.PathValue("primary_id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d.Signed)
}

// KeyLogPage answers GET /v1/keys/{primary_id}/log. Documents are written
// byte for byte (writeJSON does not HTML-escape), so payloads stay canonical.
type KeyLogPage struct {
	Documents []json.RawMessage `json:"documents"`
	// Next is the from of the next page, 0 when this page reached the
	// latest version.
	Next uint64 `json:"next"`
}

func (s *SigServer) chain(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Access-Control-Allow-Origin", "*") // as latest
	q := r.URL.Query()
	from, err := queryUint(q.Get("from"), "from", 1)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryUint(q.Get("limit"), "limit", MaxKeyLogPage)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit = min(max(limit, 1), MaxKeyLogPage)
	// One more than asked tells whether another page follows.
	docs, err := s.dir.Log(r.Context(), r.PathValue("primary_id"), from, int(limit)+1)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page := KeyLogPage{Documents: []json.RawMessage{}}
	for i, d := range docs {
		if i == int(limit) {
			page.Next = d.Version
			break
		}
		page.Documents = append(page.Documents, d.Signed)
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *SigServer) noRoute(w http.ResponseWriter, r *http.Request) {
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
			writeError(w, server.Errorf(server.CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
	}
	writeError(w, server.Errorf(server.CodeNotFound, "no route %s", r.URL.Path))
}

func (s *SigServer) fail(w http.ResponseWriter, r *http.Request, err error) {
	if server.ErrorCode(err) == server.CodeInternal {
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, err)
}
