// Package httpapi serves the KEZ chat protocol (docs/protocol.md) over HTTP
// and Server-Sent Events. Handlers decode and bound requests, apply the
// per-address limits, and call server.Service; they hold no protocol rules
// of their own.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

// Config is what the HTTP layer needs beyond the Service.
type Config struct {
	// Version is reported by /v1/healthz.
	Version string
	// PublicURL is the server's origin as clients reach it, for WebFinger
	// links, e.g. https://chat.example.
	PublicURL string
	// SigServerURL is the sig-server's origin as clients reach it; when
	// set, WebFinger links each handle's key document there.
	SigServerURL string
	// TrustedProxies are the networks whose X-Forwarded-For is believed
	// when finding a client's address.
	TrustedProxies []netip.Prefix
	// KeepAlive is the interval of stream keep-alive comments.
	KeepAlive time.Duration
	// StreamWriteTimeout bounds one write to a stream: a client that takes
	// longer to accept a frame is cut off and resumes later.
	StreamWriteTimeout time.Duration
	// ResponseWriteTimeout bounds writing an inbox page: a client that
	// takes longer to read it is cut off.
	ResponseWriteTimeout time.Duration
	// Limits per client address.
	RegisterLimiter *server.RateLimiter
	SendLimiter     *server.RateLimiter
	// FailedAuthLimiter limits failed authentications per client address,
	// FailedAuthHandleLimiter per handle.
	FailedAuthLimiter       *server.RateLimiter
	FailedAuthHandleLimiter *server.RateLimiter
	// AddressQuota limits the bytes of messages each client address
	// stores, a token a byte (nil: none).
	AddressQuota *server.RateLimiter
	// MaxStreamsPerAddress bounds the streams one client address holds
	// open (0: no cap).
	MaxStreamsPerAddress int
	// VAPIDPublicKey is served to browsers for pushManager.subscribe when
	// the Service has a Pusher.
	VAPIDPublicKey string
	// App serves the web app at /.
	App http.Handler
}

// Body limits per route.
const (
	maxRegisterBody = 4 << 10
	maxMessageBody  = 96 << 10
	// maxBatchBody holds 256 documents of about 16 KiB each, or fewer
	// larger ones.
	maxBatchBody = 4 << 20
)

// Server is the HTTP face of a server.Service.
type Server struct {
	cfg     Config
	svc     *server.Service
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics

	// shutdown ends every open stream when cancelled; pumps are the
	// goroutines of streams on taken-over connections, which
	// http.Server.Shutdown does not see.
	shutdown    context.Context
	stopStreams context.CancelFunc
	pumps       sync.WaitGroup
	// pumpsMu orders starting a pump against CloseStreams: a WaitGroup
	// must not grow from zero while Wait runs, so once closed no pump
	// starts.
	pumpsMu     sync.Mutex
	pumpsClosed bool

	streamsMu   sync.Mutex
	addrStreams map[string]int // open streams per client address
}

// New returns a Server for svc, registering its metrics with reg.
func New(cfg Config, svc *server.Service, log *slog.Logger, reg prometheus.Registerer) *Server {
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.StreamWriteTimeout <= 0 {
		cfg.StreamWriteTimeout = 30 * time.Second
	}
	if cfg.ResponseWriteTimeout <= 0 {
		cfg.ResponseWriteTimeout = 30 * time.Second
	}
	if cfg.App == nil {
		cfg.App = fallbackApp()
	}
	s := &Server{cfg: cfg, svc: svc, log: log, mux: http.NewServeMux(), metrics: newMetrics(reg, svc), addrStreams: make(map[string]int)}
	s.shutdown, s.stopStreams = context.WithCancel(context.Background())
	s.routes()
	return s
}

// Handler is the whole HTTP API with its middleware.
func (s *Server) Handler() http.Handler {
	return s.metrics.http.instrument(recoverPanics(s.mux, s.log))
}

// CloseStreams ends every open stream cleanly and waits until they have
// ended; call it when shutting down, since http.Server.Shutdown would wait
// for streams that never end, or not see them at all.
func (s *Server) CloseStreams() {
	s.pumpsMu.Lock()
	s.pumpsClosed = true
	s.pumpsMu.Unlock()
	s.stopStreams()
	s.pumps.Wait()
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /v1/healthz", s.healthz)
	s.mux.HandleFunc("GET /v1/readyz", s.readyz)
	s.mux.HandleFunc("POST /v1/register", s.register)
	s.mux.HandleFunc("GET /v1/u/{handle}", s.user)
	s.mux.HandleFunc("GET /.well-known/webfinger", s.webfinger)
	s.mux.HandleFunc("POST /v1/messages", s.sendMessage)
	s.mux.HandleFunc("POST /v1/batch/{handle}", s.sendBatch)
	s.mux.HandleFunc("GET /v1/inbox/{handle}", s.inbox)
	s.mux.HandleFunc("DELETE /v1/inbox/{handle}", s.ack)
	s.mux.HandleFunc("GET /v1/inbox/{handle}/stream", s.stream)
	s.mux.HandleFunc("GET /v1/push/vapid-public-key", s.vapidPublicKey)
	s.mux.HandleFunc("POST /v1/push/subscribe/{handle}", s.pushSubscribe)
	s.mux.HandleFunc("POST /v1/push/unsubscribe/{handle}", s.pushUnsubscribe)
	s.mux.HandleFunc("POST /v1/typing/{handle}", s.typing)
	s.mux.HandleFunc("POST /v1/link/{handle}", s.openLink)
	s.mux.HandleFunc("PUT /v1/link/{channel}/{slot}", s.writeLink)
	s.mux.HandleFunc("GET /v1/link/{channel}/{slot}", s.readLink)
	s.mux.HandleFunc("POST /v1/blobs/{handle}", s.uploadBlob)
	s.mux.HandleFunc("GET /v1/blobs/{id}", s.downloadBlob)
	s.mux.HandleFunc("POST /v1/federation/messages", s.receiveFederated)
	s.mux.HandleFunc("POST /v1/federation/typing", s.receiveTyping)
	s.mux.HandleFunc("GET /v1/outbox/{handle}", s.outbox)
	s.mux.HandleFunc("GET /v1/privacy/{handle}", s.privacy)
	s.mux.HandleFunc("PUT /v1/privacy/{handle}", s.setPrivacy)
	s.mux.HandleFunc("/v1/", s.noRoute)
	s.mux.HandleFunc("/", s.app)
}

// app serves the web app; it only reads.
func (s *Server) app(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, server.Errorf(server.CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
		return
	}
	s.cfg.App.ServeHTTP(w, r)
}

// noRoute answers paths under /v1/ that no route takes: 405 when the path
// exists with another method, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/v1/" && pattern != "/" && pattern != "" {
			writeError(w, server.Errorf(server.CodeMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
	}
	writeError(w, server.Errorf(server.CodeNotFound, "no route %s", r.URL.Path))
}

func recoverPanics(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.ErrorContext(r.Context(), "panic serving request", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, server.Errorf(server.CodeInternal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}
