package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"kez.lat/chat/server"
	"kez.lat/chat/server/httpapi"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/membus"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/server/sqlite"
	"kez.lat/chat/web"
)

// serverFlags are the chat server's settings; each also comes from its
// KEZ_ environment variable.
type serverFlags struct {
	bind, db, domain, publicURL, metricsBind   string
	logFormat, logLevel                        string
	trustedProxies                             string
	retention, shutdownTimeout                 time.Duration
	maxPending, maxStreams, maxConns           int
	registerRate, sendRate, handleSendRate     float64
	failedAuthRate                             float64
	vapidKeyPath, vapidSubject, pushAllow      string
	pushTTL                                    time.Duration
	maxPushSubscriptions                       int
	sigServerURL, sigServerPublicURL           string
	keyCacheTTL                                time.Duration
	store, natsURL, natsUser, natsPasswordFile string
	natsCalloutSeedFile                        string
	jsReplicas                                 int
	jsMaxBytes                                 int64
}

func runServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	def := server.DefaultConfig()
	var f serverFlags
	fs := newFlagSet("server", "server [flags]\n\nRuns the chat server: the HTTP API, inbox streams and the web app.", stderr)
	fs.StringVar(&f.bind, "bind", "127.0.0.1:6969", "address to serve HTTP on")
	fs.StringVar(&f.db, "db", "./kez-chat.db", "SQLite database file")
	fs.StringVar(&f.domain, "server", def.Domain, "this server's domain; signed payloads must name it")
	fs.StringVar(&f.publicURL, "public-url", "", "origin clients reach the server at (default http://<bind> for localhost, else https://<server>)")
	fs.StringVar(&f.metricsBind, "metrics-bind", "127.0.0.1:9469", "address to serve Prometheus /metrics on; empty disables")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed")
	fs.DurationVar(&f.retention, "retention", def.Retention, "how long unacknowledged messages are kept")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long SIGTERM waits for requests in flight")
	fs.IntVar(&f.maxPending, "max-pending", def.MaxPending, "unacknowledged messages one inbox may hold")
	fs.IntVar(&f.maxStreams, "max-streams-per-handle", def.MaxStreamsPerHandle, "inbox streams one handle may have open")
	fs.IntVar(&f.maxConns, "max-connections", 16384, "HTTP connections served at once")
	fs.Float64Var(&f.registerRate, "register-rate", 0.2, "registrations per second per client address, burst 20 (0 disables)")
	fs.Float64Var(&f.sendRate, "send-rate", 200, "messages per second per client address, burst 2x (0 disables)")
	fs.Float64Var(&f.handleSendRate, "handle-send-rate", 30, "messages per second per sending handle, burst 2x (0 disables)")
	fs.Float64Var(&f.failedAuthRate, "failed-auth-rate", 1, "failed authentications per second per client address and per handle, burst 30 (0 disables)")
	fs.StringVar(&f.vapidSubject, "vapid-subject", "", "Web Push contact, a mailto: or https: URL (a bare e-mail address is made mailto:); Web Push is off without it")
	fs.StringVar(&f.vapidKeyPath, "vapid-key-path", "./kez-chat-vapid.pem", "VAPID key (PEM PKCS#8), generated on first start and never replaced while it exists")
	fs.StringVar(&f.pushAllow, "push-allow-endpoint", "", "comma-separated push endpoints allowed beyond the push services' hosts: origins (http://127.0.0.1:8080, trusted as written) or host patterns (push.example.net, *.example.net)")
	fs.DurationVar(&f.pushTTL, "push-ttl", 24*time.Hour, "how long push services keep a notification for an offline device")
	fs.IntVar(&f.maxPushSubscriptions, "max-push-subscriptions", def.MaxPushSubscriptions, "push subscriptions one handle may have; the oldest is evicted")
	fs.StringVar(&f.sigServerURL, "sig-server-url", "", "sig-server the chat server resolves device keys from, e.g. http://127.0.0.1:7878; empty: registered keys only")
	fs.StringVar(&f.sigServerPublicURL, "sig-server-public-url", "", "origin clients reach the sig-server at, linked from WebFinger (default: the public URL, whose /v1/keys the proxy routes to the sig-server)")
	fs.DurationVar(&f.keyCacheTTL, "key-cache-ttl", sigclient.DefaultConfig().TTL, "how long resolved device keys are used before the sig-server is asked again (bounds how long a revoked key works)")
	fs.StringVar(&f.store, "store", "sqlite", "where messages and users are kept: sqlite (--db, one replica) or jetstream (NATS JetStream at --nats-url, any number of replicas)")
	fs.StringVar(&f.natsURL, "nats-url", "", "NATS server, e.g. nats://kez-nats:4222: fan-out to streams on other replicas and presence for push; empty: this replica alone")
	fs.StringVar(&f.natsUser, "nats-user", "", "user the chat server authenticates to NATS as (the auth callout's auth_users)")
	fs.StringVar(&f.natsPasswordFile, "nats-password-file", "", "file holding --nats-user's password")
	fs.StringVar(&f.natsCalloutSeedFile, "nats-callout-issuer-seed-file", "", "file holding the account nkey seed (SA...) whose public key is auth_callout.issuer in nats.conf: this server then answers NATS's auth callout, letting browsers follow their own inbox over NATS WebSocket; needs --nats-url")
	fs.IntVar(&f.jsReplicas, "jetstream-replicas", 1, "with --store jetstream: replicas of the stream and KV buckets (1, 3 or 5 NATS servers)")
	fs.Int64Var(&f.jsMaxBytes, "jetstream-max-bytes", 0, "with --store jetstream: bytes the message stream may hold, 0 for no limit")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case f.store != "sqlite" && f.store != "jetstream":
		return fmt.Errorf("--store %q: want sqlite or jetstream", f.store)
	case f.store == "jetstream" && f.natsURL == "":
		return errors.New("--store jetstream needs --nats-url")
	case f.natsCalloutSeedFile != "" && f.natsURL == "":
		return errors.New("--nats-callout-issuer-seed-file needs --nats-url")
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	proxies, err := parsePrefixes(f.trustedProxies)
	if err != nil {
		return err
	}
	if f.publicURL == "" {
		f.publicURL = "https://" + f.domain
		if f.domain == "localhost" {
			f.publicURL = "http://" + f.bind
		}
	}
	if f.sigServerURL != "" && f.sigServerPublicURL == "" {
		f.sigServerPublicURL = f.publicURL
	}
	return serve(ctx, f, proxies, log)
}

func serve(ctx context.Context, f serverFlags, proxies []netip.Prefix, log *slog.Logger) error {
	store, err := openStore(ctx, f, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing database", "err", err)
		}
	}()

	cfg := server.DefaultConfig()
	cfg.Domain, cfg.Retention, cfg.MaxPending, cfg.MaxStreamsPerHandle = f.domain, f.retention, f.maxPending, f.maxStreams
	cfg.MaxPushSubscriptions = f.maxPushSubscriptions
	var broker server.Broker = membus.New()
	var bus *natsbus.Bus
	if f.natsURL != "" {
		ncfg, err := natsConfig(f)
		if err != nil {
			return err
		}
		if bus, err = natsbus.New(ncfg, log); err != nil {
			return err
		}
		defer bus.Close()
		broker = bus
	}
	svc := server.NewService(cfg, store, broker, log)
	svc.SendLimiter = server.NewRateLimiter(f.handleSendRate, int(2*f.handleSendRate), 100_000)
	if f.natsCalloutSeedFile != "" {
		issuer, err := natsauth.LoadIssuer(f.natsCalloutSeedFile)
		if err != nil {
			return fmt.Errorf("--nats-callout-issuer-seed-file: %w", err)
		}
		co, err := natsauth.Start(bus.Conn(), natsauth.Config{Issuer: issuer}, svc, log)
		if err != nil {
			return err
		}
		defer co.Close()
		pub, _ := issuer.PublicKey()
		log.Info("answering NATS auth callout", "issuer", pub)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if bus != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kezchat_nats_connected",
			Help: "1 while the connection to NATS (fan-out to other replicas, presence) is up.",
		}, func() float64 {
			if bus.Ping(context.Background()) != nil {
				return 0
			}
			return 1
		}))
	}
	if js, ok := store.(*jsstore.Store); ok {
		registerWriterMetrics(reg, js)
	}
	if f.sigServerURL != "" {
		kcfg := sigclient.DefaultConfig()
		kcfg.URL, kcfg.TTL = f.sigServerURL, f.keyCacheTTL
		keys, err := sigclient.New(kcfg, log, reg)
		if err != nil {
			return fmt.Errorf("--sig-server-url: %w", err)
		}
		svc.Keys = keys
	} else {
		log.Info("device keys are off: set --sig-server-url to accept the keys identities publish on their sig-server")
	}
	var vapidPublicKey string
	var sender *push.Sender
	if f.vapidSubject != "" {
		var policy *push.Policy
		var presence server.Presence
		if bus != nil {
			presence = bus
		}
		if sender, policy, vapidPublicKey, err = startPush(f, store, presence, log, reg); err != nil {
			return err
		}
		svc.Pusher, svc.Endpoints = sender, policy
	} else {
		log.Info("Web Push is off: set --vapid-subject to turn it on")
	}
	api := httpapi.New(httpapi.Config{
		VAPIDPublicKey:    vapidPublicKey,
		Version:           version,
		PublicURL:         f.publicURL,
		SigServerURL:      f.sigServerPublicURL,
		TrustedProxies:    proxies,
		RegisterLimiter:   server.NewRateLimiter(f.registerRate, 20, 100_000),
		SendLimiter:       server.NewRateLimiter(f.sendRate, int(2*f.sendRate), 100_000),
		FailedAuthLimiter: server.NewRateLimiter(f.failedAuthRate, 30, 100_000),
		App:               web.Handler(), // nil without a web build: the built-in page
	}, svc, log, reg)

	ln, err := net.Listen("tcp", f.bind)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.bind, err)
	}
	srvs, err := serveHTTP(apiServer(api.Handler(), 0, log), httpapi.LimitListener(ln, f.maxConns), f.metricsBind, reg)
	if err != nil {
		ln.Close()
		return err
	}
	pruneCtx, stopPrune := context.WithCancel(context.Background())
	var pruning sync.WaitGroup
	pruning.Go(func() { svc.Run(pruneCtx, time.Minute) })
	log.Info("serving", "server", f.domain, "bind", ln.Addr().String(), "public_url", f.publicURL,
		"metrics", f.metricsBind, "store", f.store, "db", f.db, "nats", f.natsURL != "", "version", version)

	serveErr := srvs.wait(ctx, log)
	// Stop accepting, end streams cleanly, let requests in flight finish,
	// then close the database (deferred above).
	api.CloseStreams()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	srvs.shutdown(shutdownCtx, log)
	stopPrune()
	if sender != nil {
		if err := sender.Close(shutdownCtx); err != nil {
			log.Warn("push sender did not stop in time", "err", err)
		}
	}
	pruning.Wait()
	if serveErr != nil {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// startPush loads (or creates) the VAPID key and starts the push sender.
// A bad subject or key file stops start-up: pushes sent under a wrong
// identity would fail silently at every push service.
func startPush(f serverFlags, store push.SubscriptionStore, presence server.Presence, log *slog.Logger, reg prometheus.Registerer) (*push.Sender, *push.Policy, string, error) {
	subject, err := push.NormalizeSubject(f.vapidSubject)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--vapid-subject: %w", err)
	}
	key, created, err := push.LoadOrCreateKey(f.vapidKeyPath)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--vapid-key-path: %w", err)
	}
	if created {
		log.Info("generated a VAPID key; keep this file, a new key breaks every push subscription", "path", f.vapidKeyPath)
	}
	var extra []string
	for _, e := range strings.Split(f.pushAllow, ",") {
		if e = strings.TrimSpace(e); e != "" {
			extra = append(extra, e)
		}
	}
	policy, err := push.NewPolicy(extra)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--push-allow-endpoint: %w", err)
	}
	sender := push.NewSender(push.Config{Key: key, Subject: subject, TTL: f.pushTTL, Presence: presence}, store, policy, log, reg)
	sender.Start()
	return sender, policy, push.PublicKey(key), nil
}

// openStore opens the store --store names.
func openStore(ctx context.Context, f serverFlags, log *slog.Logger) (server.Store, error) {
	if f.store != "jetstream" {
		db, err := sqlite.Open(ctx, f.db, log)
		if err != nil {
			return nil, fmt.Errorf("opening database %s: %w", f.db, err)
		}
		return db, nil
	}
	ncfg, err := natsConfig(f)
	if err != nil {
		return nil, err
	}
	ncfg.Name = "kezchat store " + f.domain
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := jsstore.Open(ctx, jsstore.Config{NATS: ncfg, Replicas: f.jsReplicas, Retention: f.retention,
		MaxPending: f.maxPending, MaxBytes: f.jsMaxBytes}, log)
	if err != nil {
		return nil, fmt.Errorf("opening the JetStream store: %w", err)
	}
	return s, nil
}

// registerWriterMetrics exports what the JetStream store's writer does.
func registerWriterMetrics(reg prometheus.Registerer, js *jsstore.Store) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kezchat_jetstream_writer_lease",
			Help: "1 while this replica holds the writer lease and stores every replica's envelopes.",
		}, func() float64 {
			if js.HoldsWriterLease() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_jetstream_writes_total",
			Help: "JetStream writes of envelopes by this replica's writer: atomic batches and envelopes published alone.",
		}, func() float64 { b, _ := js.WriterStats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_jetstream_envelopes_written_total",
			Help: "Envelopes stored by this replica's writer (those other replicas forwarded included).",
		}, func() float64 { _, e := js.WriterStats(); return float64(e) }),
	)
}

// natsConfig is the NATS connection the flags describe.
func natsConfig(f serverFlags) (natsbus.Config, error) {
	cfg := natsbus.Config{URL: f.natsURL, Name: "kezchat " + f.domain, User: f.natsUser}
	if f.natsPasswordFile != "" {
		b, err := os.ReadFile(f.natsPasswordFile)
		if err != nil {
			return cfg, fmt.Errorf("--nats-password-file: %w", err)
		}
		cfg.Password = strings.TrimSpace(string(b))
	}
	return cfg, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", part, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
