// Package app puts the chat server and the sig-server together from their
// parts: which store, broker, push sender and key resolver, how they reach
// the HTTP API, on which listeners with which limits, and in which order
// they stop. It is the one place that decides how the parts fit: `kezchat
// server` and `kezchat sig-server` build a Config from their flags,
// server/testutil builds one for each test, and both run what New returns.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
	"kez.lat/chat/server/federation"
	"kez.lat/chat/server/httpapi"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/membus"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/server/sqlite"
)

// Limit is a token-bucket rate limit per key (a client address or a
// handle); a Rate of 0 turns it off.
type Limit struct {
	Rate  float64 // events per second
	Burst int
}

// maxLimitKeys bounds the keys one limiter tracks.
const maxLimitKeys = 100_000

func (l Limit) limiter() *server.RateLimiter {
	return server.NewRateLimiter(l.Rate, l.Burst, maxLimitKeys)
}

// Quota is how many bytes of messages one key (a sending handle, a client
// address) may store a day, as a bucket of that many bytes refilled over
// 24 hours; 0 turns it off.
type Quota struct {
	BytesPerDay int64
}

func (q Quota) limiter() *server.RateLimiter {
	return server.NewRateLimiter(float64(q.BytesPerDay)/(24*60*60), int(q.BytesPerDay), maxLimitKeys)
}

// Config is everything that decides how a chat server is put together.
type Config struct {
	// Service is the protocol's policy: the domain every signed payload
	// names, retention, and the inbox, stream and push limits.
	Service server.Config
	// Version is reported by /v1/healthz and logged at start.
	Version string
	// PublicURL is the origin clients reach the server at (WebFinger).
	PublicURL string

	// Bind is the API's listen address ("127.0.0.1:0" takes a free port);
	// MetricsBind is Prometheus /metrics's, or empty for none; PprofBind
	// Go's runtime profiles' (/debug/pprof/), empty (none) unless asked.
	Bind, MetricsBind, PprofBind string
	// MaxConnections bounds the API's connections at once, and
	// MaxConnectionsPerAddress those of one client address (0: no cap;
	// trusted proxies are not capped). MaxStreamsPerAddress bounds the
	// inbox streams one client address holds open (0: no cap).
	MaxConnections, MaxConnectionsPerAddress int
	MaxStreamsPerAddress                     int
	// ShutdownTimeout bounds how long a stopping server waits for
	// requests in flight and pushes queued.
	ShutdownTimeout time.Duration
	// TrustedProxies are the networks whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// Per client address: registrations, messages, failed authentications
	// (also per handle); and messages per sending handle.
	RegisterLimit, SendLimit, FailedAuthLimit, HandleSendLimit Limit
	// TypingLimit limits typing requests per sending handle.
	TypingLimit Limit
	// The bytes of messages one sending handle, and one client address,
	// may store a day.
	SenderQuota, AddressQuota Quota
	// KeepAlive and StreamWriteTimeout tune streams (httpapi's defaults
	// when zero).
	KeepAlive, StreamWriteTimeout time.Duration
	// App serves the web app at /; nil serves a built-in page.
	App http.Handler

	// DBPath is the SQLite database; unused with JetStream. MaxDBBytes,
	// when set, is as far as it may grow: writes past it answer
	// storage_full while the disk still has room for the WAL.
	DBPath     string
	MaxDBBytes int64
	// JetStream, when set, keeps messages and users on NATS JetStream, so
	// that any number of replicas share them.
	JetStream *jsstore.Config
	// NATS, when set, carries envelopes to streams on other replicas and
	// tells the push sender who streams where.
	NATS *natsbus.Config
	// Callout, when set with NATS, makes the server answer NATS's auth
	// callout, so browsers follow their own inbox over NATS WebSocket.
	Callout *natsauth.Config
	// Push, when set, turns Web Push on; PushAllow are endpoints allowed
	// beyond the push services' hosts (push.NewPolicy).
	Push      *push.Config
	PushAllow []string
	// Keys, when set, resolves the device keys identities publish on a
	// sig-server; SigServerPublicURL is that sig-server as clients reach
	// it, linked from WebFinger.
	Keys               *sigclient.Config
	SigServerPublicURL string
	// Federation, when set, federates with other servers.
	Federation *Federation
	// Listener, when set, is the API's listener instead of one bound on
	// Bind: a test that must know its address (a federated test server's
	// domain) before the server is made.
	Listener net.Listener
}

// Federation is how a chat server federates (--federation and its
// flags).
type Federation struct {
	Allow, Block []string
	// Loopback admits the test domains 127.0.0.1:<port> and
	// localhost:<port> over plain HTTP (--federation-insecure-loopback).
	Loopback bool
	// Tuning, the protocol's defaults when zero.
	Resolver federation.Config
	// Limits on what comes from other servers, per remote domain and per
	// remote sender (requests), and their bytes a day.
	DomainLimit, SenderLimit Limit
	SenderQuota, DomainQuota Quota
}

// DefaultFederation is the protocol's limits (docs/protocol.md, "Limits").
func DefaultFederation() Federation {
	return Federation{
		DomainLimit: Limit{Rate: 50, Burst: 100},
		SenderLimit: Limit{Rate: 30, Burst: 60},
		SenderQuota: Quota{BytesPerDay: 64 << 20},
		DomainQuota: Quota{BytesPerDay: 1 << 30},
	}
}

// DefaultConfig is the defaults `kezchat server --help` documents: a
// laptop's server on SQLite with every limit on.
func DefaultConfig() Config {
	return Config{
		Service:        server.DefaultConfig(),
		Version:        "dev",
		Bind:           "127.0.0.1:6969",
		MetricsBind:    "127.0.0.1:9469",
		MaxConnections: 16384,
		// A household or an office behind one address, with a few
		// devices and tabs each; a stranger with one host gets no more.
		MaxConnectionsPerAddress: 256,
		MaxStreamsPerAddress:     64,
		ShutdownTimeout:          10 * time.Second,
		RegisterLimit:            Limit{Rate: 0.2, Burst: 20},
		SendLimit:                Limit{Rate: 200, Burst: 400},
		FailedAuthLimit:          Limit{Rate: 1, Burst: 30},
		HandleSendLimit:          Limit{Rate: 30, Burst: 60},
		TypingLimit:              Limit{Rate: 1, Burst: 5},
		// A day's quota holds two attachments of the largest size
		// (--max-blob-bytes, 25 MiB) from one handle, four from one
		// address. The operator sizes both from its volume instead.
		SenderQuota:  Quota{BytesPerDay: 64 << 20},
		AddressQuota: Quota{BytesPerDay: 128 << 20},
		DBPath:       "./kez-chat.db",
	}
}

// Server is a chat server whose parts are made and whose listeners are
// bound. Run serves it; when it stops, open streams end first (clients
// resume elsewhere or later), then requests in flight finish, then the
// parts close: pruning, the push sender (queued pushes get the shutdown
// timeout again), the NATS auth callout and connection, the store.
type Server struct {
	// The parts, for tests and metrics.
	Service *server.Service
	Store   server.Store
	Bus     *natsbus.Bus // nil without NATS
	API     *httpapi.Server
	Keys    *sigclient.Resolver // nil without a sig-server
	Metrics *prometheus.Registry

	daemon
}

// New makes a chat server's parts from cfg and binds its listeners; on
// error nothing is left open.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	s := &Server{Metrics: newRegistry(), daemon: daemon{log: log, shutdownTimeout: cfg.ShutdownTimeout}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if cfg.Callout != nil && cfg.NATS == nil {
		return nil, errors.New("answering the NATS auth callout needs a NATS connection")
	}
	if s.Store, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	s.onClose(s.Store.Close)

	var broker server.Broker = membus.New()
	if cfg.NATS != nil {
		if s.Bus, err = natsbus.New(*cfg.NATS, log); err != nil {
			return nil, err
		}
		s.onClose(func() error { s.Bus.Close(); return nil })
		broker = s.Bus
		registerNATSMetrics(s.Metrics, s.Bus)
	}
	if js, ok := s.Store.(*jsstore.Store); ok {
		registerWriterMetrics(s.Metrics, js)
	}
	registerStorageMetrics(s.Metrics, s.Store)
	registerLimitMetrics(s.Metrics, cfg.MaxConnections)
	s.Service = server.NewService(cfg.Service, s.Store, broker, log)
	s.Service.SendLimiter = cfg.HandleSendLimit.limiter()
	s.Service.TypingLimiter = cfg.TypingLimit.limiter()
	s.Service.SenderQuota = cfg.SenderQuota.limiter()
	if cfg.Callout != nil {
		if err := s.startCallout(*cfg.Callout); err != nil {
			return nil, err
		}
	}
	if cfg.Keys != nil {
		kcfg := *cfg.Keys
		kcfg.Checkpoints = s.Store // shared by replicas, kept across restarts
		if s.Keys, err = sigclient.New(kcfg, log, s.Metrics); err != nil {
			return nil, fmt.Errorf("the sig-server's key resolver: %w", err)
		}
		s.Service.Keys = s.Keys
	} else {
		log.Info("device keys are off: set --sig-server-url to accept the keys identities publish on their sig-server")
	}
	var courier *federation.Courier
	if cfg.Federation != nil {
		if courier, err = s.federate(cfg, log); err != nil {
			return nil, err
		}
	} else {
		log.Info("federation is off: set --federation to exchange messages with other servers")
	}
	var vapidPublicKey string
	if cfg.Push != nil {
		if vapidPublicKey, err = s.startPush(*cfg.Push, cfg.PushAllow); err != nil {
			return nil, err
		}
	} else {
		log.Info("Web Push is off: set --vapid-subject to turn it on")
	}
	s.API = httpapi.New(httpapi.Config{
		Version:                 cfg.Version,
		PublicURL:               cfg.PublicURL,
		SigServerURL:            cfg.SigServerPublicURL,
		TrustedProxies:          cfg.TrustedProxies,
		KeepAlive:               cfg.KeepAlive,
		StreamWriteTimeout:      cfg.StreamWriteTimeout,
		RegisterLimiter:         cfg.RegisterLimit.limiter(),
		SendLimiter:             cfg.SendLimit.limiter(),
		FailedAuthLimiter:       cfg.FailedAuthLimit.limiter(),
		FailedAuthHandleLimiter: cfg.FailedAuthLimit.limiter(),
		AddressQuota:            cfg.AddressQuota.limiter(),
		MaxStreamsPerAddress:    cfg.MaxStreamsPerAddress,
		VAPIDPublicKey:          vapidPublicKey,
		App:                     cfg.App,
	}, s.Service, log, s.Metrics)
	// No write timeout: streams outlive any.
	s.http, err = listen(apiServer(s.API.Handler(), 0, log), cfg.Listener, cfg.Bind, httpapi.ListenerLimits{
		Total: cfg.MaxConnections, PerAddress: cfg.MaxConnectionsPerAddress, Trusted: cfg.TrustedProxies,
	}, metricsListener(cfg.MetricsBind, s.Metrics), pprofListener(cfg.PprofBind))
	if err != nil {
		return nil, err
	}

	pruneCtx, stopPrune := context.WithCancel(context.Background())
	var pruning sync.WaitGroup
	s.started = func() {
		pruning.Go(func() { s.Service.Run(pruneCtx, time.Minute) })
		if courier != nil {
			pruning.Go(func() { courier.Run(pruneCtx) })
		}
		log.Info("serving", "domain", cfg.Service.Domain, "bind", s.Addr().String(), "public_url", cfg.PublicURL,
			"metrics", cfg.MetricsBind, "store", storeKind(cfg), "db", cfg.DBPath, "nats", s.Bus != nil, "version", cfg.Version)
	}
	// Streams end first: Shutdown would wait for them, or not see those on
	// connections they took over; clients resume elsewhere or later.
	s.stopping = s.API.CloseStreams
	s.onClose(func() error { stopPrune(); pruning.Wait(); return nil })
	return s, nil
}

// openStore opens SQLite at cfg.DBPath, or the JetStream store.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (server.Store, error) {
	if cfg.JetStream == nil {
		db, err := sqlite.Open(ctx, cfg.DBPath, log)
		if err != nil {
			return nil, fmt.Errorf("opening database %s: %w", cfg.DBPath, err)
		}
		if cfg.MaxDBBytes > 0 {
			if err := db.LimitSize(ctx, cfg.MaxDBBytes); err != nil {
				db.Close()
				return nil, err
			}
		}
		return db, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := jsstore.Open(ctx, *cfg.JetStream, log)
	if err != nil {
		return nil, fmt.Errorf("opening the JetStream store: %w", err)
	}
	return s, nil
}

// startCallout answers NATS's auth callout on the bus's connection, and
// returns once the NATS server has the subscription.
func (s *Server) startCallout(cfg natsauth.Config) error {
	co, err := natsauth.Start(s.Bus.Conn(), cfg, s.Service, s.log)
	if err != nil {
		return err
	}
	s.onClose(func() error { co.Close(); return nil })
	if err := s.Bus.Conn().Flush(); err != nil {
		return fmt.Errorf("subscribing to the NATS auth callout: %w", err)
	}
	pub, _ := cfg.Issuer.PublicKey()
	s.log.Info("answering NATS auth callout", "issuer", pub)
	return nil
}

// startPush starts the push sender and returns the VAPID public key
// browsers subscribe with.
func (s *Server) startPush(cfg push.Config, allow []string) (string, error) {
	policy, err := push.NewPolicy(allow)
	if err != nil {
		return "", fmt.Errorf("push endpoints allowed: %w", err)
	}
	if s.Bus != nil {
		cfg.Presence = s.Bus
	}
	sender := push.NewSender(cfg, s.Store, policy, s.log, s.Metrics)
	sender.Start()
	s.onClose(func() error {
		// Pushes still queued go out, for as long as a shutdown waits.
		ctx, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
		defer cancel()
		if err := sender.Close(ctx); err != nil {
			s.log.Warn("push sender did not stop in time", "err", err)
		}
		return nil
	})
	s.Service.Pusher, s.Service.Endpoints = sender, policy
	return push.PublicKey(cfg.Key), nil
}

func storeKind(cfg Config) string {
	if cfg.JetStream != nil {
		return "jetstream"
	}
	return "sqlite"
}

// federate gives the Service its federation: the resolver of remote
// senders' keys and the courier of the outbox. On JetStream the courier
// delivers on the writer lease's holder only, woken by every replica's
// sends.
func (s *Server) federate(cfg Config, log *slog.Logger) (*federation.Courier, error) {
	f := cfg.Federation
	db, ok := s.Store.(interface {
		server.FederationStore
		server.KeyCheckpoints
	})
	if !ok {
		return nil, fmt.Errorf("the %T store keeps no federation state", s.Store)
	}
	for _, d := range append(append([]string(nil), f.Allow...), f.Block...) {
		if err := server.CheckDomain(d, f.Loopback); err != nil {
			return nil, fmt.Errorf("federation domain %q: %w", d, err)
		}
	}
	rcfg := f.Resolver
	rcfg.Loopback = f.Loopback
	courier := federation.NewCourier(rcfg, db, log, s.Metrics)
	if js, ok := s.Store.(*jsstore.Store); ok {
		courier.Active = js.HoldsWriterLease
		if err := js.OnQueued(courier.Wake); err != nil {
			return nil, err
		}
	}
	s.Service.Fed = &server.Federation{
		Store:         db,
		Resolver:      federation.NewResolver(rcfg, db, db, log),
		Domains:       server.NewDomainPolicy(f.Allow, f.Block),
		Loopback:      f.Loopback,
		Outbox:        server.DefaultOutboxLimits(),
		DomainLimiter: f.DomainLimit.limiter(),
		SenderLimiter: f.SenderLimit.limiter(),
		SenderQuota:   f.SenderQuota.limiter(),
		DomainQuota:   f.DomainQuota.limiter(),
		Queued:        courier.Wake,
		ForwardTyping: courier.ForwardTyping,
	}
	log.Info("federation is on", "allow", f.Allow, "block", f.Block, "loopback", f.Loopback)
	return courier, nil
}
