package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"kez.lat/chat/server/app"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/web"
)

// serverFlags are the chat server's settings; each also comes from its
// KEZ_ environment variable.
type serverFlags struct {
	bind, db, domain, publicURL, metricsBind, pprofBind string
	domainAlias                                         string // --server, the old name of --domain
	log                                                 logFlags
	trustedProxies                                      string
	retention, shutdownTimeout                          time.Duration
	maxPending, maxStreams, maxConns                    int
	maxConnsPerAddr, maxStreamsPerAddr                  int
	maxPendingBytes, maxDBBytes, maxBlobBytes           int64
	senderQuota, addressQuota                           int64
	registerRate, sendRate, handleSendRate              float64
	typingRate                                          float64
	failedAuthRate                                      float64
	vapidKeyPath, vapidSubject, pushAllow               string
	pushTTL                                             time.Duration
	maxPushSubscriptions                                int
	sigServerURL, sigServerPublicURL                    string
	keyCacheTTL                                         time.Duration
	store                                               string
	nats                                                natsFlags
	natsCalloutSeedFile                                 string
	jsReplicas                                          int
	jsMaxBytes                                          int64
	federation, federationLoopback                      bool
	federationAllow, federationBlock                    string
}

func runServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	def := app.DefaultConfig()
	var f serverFlags
	fs := newFlagSet("server", "server [flags]\n\nRuns the chat server: the HTTP API, inbox streams and the web app.", stderr)
	fs.StringVar(&f.bind, "bind", def.Bind, "address to serve HTTP on")
	fs.StringVar(&f.db, "db", def.DBPath, "SQLite database file")
	fs.Int64Var(&f.maxDBBytes, "max-db-bytes", 0, "bytes the SQLite database may grow to; writes past it answer storage_full (507) while the disk keeps room for the WAL (0: no limit)")
	fs.StringVar(&f.domain, "domain", def.Service.Domain, "the chat's DNS name: handles are name@<domain>, and signed payloads must name it")
	fs.StringVar(&f.domainAlias, "server", "", "deprecated: the old name of --domain")
	fs.StringVar(&f.publicURL, "public-url", "", "origin clients reach the server at (default http://<bind> for localhost, else https://<domain>)")
	fs.StringVar(&f.metricsBind, "metrics-bind", def.MetricsBind, "address to serve Prometheus /metrics on; empty disables")
	fs.StringVar(&f.pprofBind, "pprof-bind", "", "address to serve Go's runtime profiles (/debug/pprof/) on, for benchmarks and debugging; empty (the default) disables. Loopback only: it exposes memory profiles")
	f.log.register(fs, "text")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed")
	fs.DurationVar(&f.retention, "retention", def.Service.Retention, "how long unacknowledged messages are kept")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", def.ShutdownTimeout, "how long SIGTERM waits for requests in flight")
	fs.IntVar(&f.maxPending, "max-pending", def.Service.MaxPending, "unacknowledged messages one inbox may hold")
	fs.Int64Var(&f.maxPendingBytes, "max-pending-bytes", def.Service.MaxPendingBytes, "bytes of unacknowledged messages one inbox may hold (0: no limit)")
	fs.Int64Var(&f.senderQuota, "sender-quota-bytes", def.SenderQuota.BytesPerDay, "bytes of messages and attachments one sending handle may store a day (0: no limit)")
	fs.Int64Var(&f.addressQuota, "address-quota-bytes", def.AddressQuota.BytesPerDay, "bytes of messages and attachments one client address may store a day (0: no limit)")
	fs.Int64Var(&f.maxBlobBytes, "max-blob-bytes", def.Service.MaxBlobBytes, "bytes one attachment blob may hold (blob_too_large past it)")
	fs.IntVar(&f.maxStreams, "max-streams-per-handle", def.Service.MaxStreamsPerHandle, "inbox streams one handle may have open")
	fs.IntVar(&f.maxConns, "max-connections", def.MaxConnections, "HTTP connections served at once")
	fs.IntVar(&f.maxConnsPerAddr, "max-connections-per-address", def.MaxConnectionsPerAddress, "HTTP connections one client address (an IPv6 /64) may hold; trusted proxies are not capped (0: no cap)")
	fs.IntVar(&f.maxStreamsPerAddr, "max-streams-per-address", def.MaxStreamsPerAddress, "inbox streams one client address may hold open (0: no cap)")
	fs.Float64Var(&f.registerRate, "register-rate", def.RegisterLimit.Rate, fmt.Sprintf("registrations per second per client address, burst %d (0 disables)", def.RegisterLimit.Burst))
	fs.Float64Var(&f.sendRate, "send-rate", def.SendLimit.Rate, "messages per second per client address, burst 2x (0 disables)")
	fs.Float64Var(&f.handleSendRate, "handle-send-rate", def.HandleSendLimit.Rate, "messages per second per sending handle, burst 2x (0 disables)")
	fs.Float64Var(&f.typingRate, "typing-rate", def.TypingLimit.Rate, "typing indicators per second per sending handle, burst 5x (0 disables)")
	fs.Float64Var(&f.failedAuthRate, "failed-auth-rate", def.FailedAuthLimit.Rate, fmt.Sprintf("failed authentications per second per client address and per handle, burst %d (0 disables)", def.FailedAuthLimit.Burst))
	fs.StringVar(&f.vapidSubject, "vapid-subject", "", "Web Push contact, a mailto: or https: URL (a bare e-mail address is made mailto:); Web Push is off without it")
	fs.StringVar(&f.vapidKeyPath, "vapid-key-path", "./kez-chat-vapid.pem", "VAPID key (PEM PKCS#8), generated on first start and never replaced while it exists")
	fs.StringVar(&f.pushAllow, "push-allow-endpoint", "", "comma-separated push endpoints allowed beyond the push services' hosts: origins (http://127.0.0.1:8080, trusted as written) or host patterns (push.example.net, *.example.net)")
	fs.DurationVar(&f.pushTTL, "push-ttl", 24*time.Hour, "how long push services keep a notification for an offline device")
	fs.IntVar(&f.maxPushSubscriptions, "max-push-subscriptions", def.Service.MaxPushSubscriptions, "push subscriptions one handle may have; the oldest is evicted")
	fs.StringVar(&f.sigServerURL, "sig-server-url", "", "sig-server the chat server resolves device keys from, e.g. http://127.0.0.1:7878; empty: registered keys only")
	fs.StringVar(&f.sigServerPublicURL, "sig-server-public-url", "", "origin clients reach the sig-server at, linked from WebFinger (default: the public URL, whose /v1/keys the proxy routes to the sig-server; for the domain localhost, --sig-server-url)")
	fs.DurationVar(&f.keyCacheTTL, "key-cache-ttl", sigclient.DefaultConfig().TTL, "how long resolved device keys are used before the sig-server is asked again (bounds how long a revoked key works)")
	fs.StringVar(&f.store, "store", "sqlite", "where messages and users are kept: sqlite (--db, one replica) or jetstream (NATS JetStream at --nats-url, any number of replicas)")
	fs.StringVar(&f.nats.url, "nats-url", "", "NATS server, e.g. nats://kez-nats:4222: fan-out to streams on other replicas and presence for push; empty: this replica alone")
	fs.StringVar(&f.nats.user, "nats-user", "", "user the chat server authenticates to NATS as (the auth callout's auth_users)")
	fs.StringVar(&f.nats.passwordFile, "nats-password-file", "", "file holding --nats-user's password")
	fs.StringVar(&f.natsCalloutSeedFile, "nats-callout-issuer-seed-file", "", "file holding the account nkey seed (SA...) whose public key is auth_callout.issuer in nats.conf: this server then answers NATS's auth callout, letting browsers follow their own inbox over NATS WebSocket; needs --nats-url")
	fs.IntVar(&f.jsReplicas, "jetstream-replicas", 1, "with --store jetstream: replicas of the stream and KV buckets (1, 3 or 5 NATS servers)")
	fs.Int64Var(&f.jsMaxBytes, "jetstream-max-bytes", 0, "with --store jetstream: bytes the message stream may hold, 0 for no limit")
	fs.BoolVar(&f.federation, "federation", false, "exchange messages with people on other servers (addresses handle@domain)")
	fs.StringVar(&f.federationAllow, "federation-allow", "", "comma-separated domains: federate with these only (default: every domain not blocked)")
	fs.StringVar(&f.federationBlock, "federation-block", "", "comma-separated domains never to federate with")
	fs.BoolVar(&f.federationLoopback, "federation-insecure-loopback", false, "tests only: also federate with 127.0.0.1:<port> and localhost:<port> over plain HTTP")
	log, err := parseDaemonFlags(fs, args, &f.log, stderr)
	if err != nil {
		return err
	}
	if err := f.resolveDomain(fs, log); err != nil {
		return err
	}
	if paceGCUnderLimit(serverGCPercent) {
		log.Info("garbage collection paced by the memory limit", "gogc", serverGCPercent, "memory_limit_bytes", debug.SetMemoryLimit(-1))
	}
	cfg, err := f.config(log)
	if err != nil {
		return err
	}
	srv, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// resolveDomain takes --server (KEZ_SERVER), the deprecated name of
// --domain, when --domain was not given.
func (f *serverFlags) resolveDomain(fs *flag.FlagSet, log *slog.Logger) error {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	switch {
	case !given["server"]:
	case given["domain"] && f.domain != f.domainAlias:
		return fmt.Errorf("--server %q and --domain %q: --server is the old name of --domain; give only --domain", f.domainAlias, f.domain)
	default:
		log.Warn("--server (KEZ_SERVER) is deprecated: use --domain (KEZ_DOMAIN)")
		f.domain = f.domainAlias
	}
	return nil
}

// config turns the flags into the server's Config, reading the files they
// name.
func (f *serverFlags) config(log *slog.Logger) (app.Config, error) {
	switch {
	case f.store != "sqlite" && f.store != "jetstream":
		return app.Config{}, fmt.Errorf("--store %q: want sqlite or jetstream", f.store)
	case f.store == "jetstream" && f.nats.url == "":
		return app.Config{}, errors.New("--store jetstream needs --nats-url")
	case f.natsCalloutSeedFile != "" && f.nats.url == "":
		return app.Config{}, errors.New("--nats-callout-issuer-seed-file needs --nats-url")
	}
	cfg := app.DefaultConfig()
	cfg.Version = version
	cfg.Service.Domain, cfg.Service.Retention = f.domain, f.retention
	cfg.Service.MaxPending, cfg.Service.MaxStreamsPerHandle = f.maxPending, f.maxStreams
	cfg.Service.MaxPendingBytes = f.maxPendingBytes
	if f.maxBlobBytes <= 0 {
		return cfg, fmt.Errorf("--max-blob-bytes %d: want a positive number of bytes", f.maxBlobBytes)
	}
	cfg.Service.MaxBlobBytes = f.maxBlobBytes
	cfg.SenderQuota.BytesPerDay, cfg.AddressQuota.BytesPerDay = f.senderQuota, f.addressQuota
	cfg.Service.MaxPushSubscriptions = f.maxPushSubscriptions
	cfg.Bind, cfg.MetricsBind, cfg.PprofBind, cfg.DBPath, cfg.MaxDBBytes = f.bind, f.metricsBind, f.pprofBind, f.db, f.maxDBBytes
	cfg.MaxConnections, cfg.ShutdownTimeout = f.maxConns, f.shutdownTimeout
	cfg.MaxConnectionsPerAddress, cfg.MaxStreamsPerAddress = f.maxConnsPerAddr, f.maxStreamsPerAddr
	cfg.RegisterLimit.Rate = f.registerRate
	cfg.SendLimit = app.Limit{Rate: f.sendRate, Burst: int(2 * f.sendRate)}
	cfg.HandleSendLimit = app.Limit{Rate: f.handleSendRate, Burst: int(2 * f.handleSendRate)}
	cfg.TypingLimit = app.Limit{Rate: f.typingRate, Burst: int(5 * f.typingRate)}
	cfg.FailedAuthLimit.Rate = f.failedAuthRate
	cfg.App = web.Handler() // nil without a web build: the built-in page
	var err error
	if cfg.TrustedProxies, err = parsePrefixes(f.trustedProxies); err != nil {
		return cfg, err
	}
	cfg.PublicURL = f.publicURL
	if cfg.PublicURL == "" {
		cfg.PublicURL = "https://" + f.domain
		if f.domain == "localhost" {
			cfg.PublicURL = "http://" + f.bind
		}
	}
	if f.nats.url != "" {
		ncfg, err := f.nats.config("kezchat " + f.domain)
		if err != nil {
			return cfg, err
		}
		cfg.NATS = &ncfg
		if f.store == "jetstream" {
			// A connection of its own, named apart in NATS's monitoring.
			store := ncfg
			store.Name = "kezchat store " + f.domain
			cfg.JetStream = &jsstore.Config{NATS: store, Replicas: f.jsReplicas, Retention: f.retention,
				MaxPending: f.maxPending, MaxBytes: f.jsMaxBytes}
		}
	}
	if f.natsCalloutSeedFile != "" {
		issuer, err := natsauth.LoadIssuer(f.natsCalloutSeedFile)
		if err != nil {
			return cfg, fmt.Errorf("--nats-callout-issuer-seed-file: %w", err)
		}
		cfg.Callout = &natsauth.Config{Issuer: issuer}
	}
	if f.sigServerURL != "" {
		kcfg := sigclient.DefaultConfig()
		kcfg.URL, kcfg.TTL = f.sigServerURL, f.keyCacheTTL
		cfg.Keys = &kcfg
		cfg.SigServerPublicURL = f.sigServerPublicURL
		switch {
		case cfg.SigServerPublicURL != "":
		case f.domain == "localhost":
			// No proxy routes /v1/keys on a laptop: clients go to the
			// sig-server itself.
			cfg.SigServerPublicURL = f.sigServerURL
		default:
			cfg.SigServerPublicURL = cfg.PublicURL
		}
	}
	if f.federation {
		fed := app.DefaultFederation()
		fed.Allow, fed.Block, fed.Loopback = splitList(f.federationAllow), splitList(f.federationBlock), f.federationLoopback
		cfg.Federation = &fed
	}
	if f.vapidSubject != "" {
		if cfg.Push, err = f.pushConfig(log); err != nil {
			return cfg, err
		}
		cfg.PushAllow = splitList(f.pushAllow)
	}
	return cfg, nil
}

// pushConfig checks the VAPID subject and loads (or creates) the key. A
// bad subject or key file stops start-up: pushes sent under a wrong
// identity would fail silently at every push service.
func (f *serverFlags) pushConfig(log *slog.Logger) (*push.Config, error) {
	subject, err := push.NormalizeSubject(f.vapidSubject)
	if err != nil {
		return nil, fmt.Errorf("--vapid-subject: %w", err)
	}
	key, created, err := push.LoadOrCreateKey(f.vapidKeyPath)
	if err != nil {
		return nil, fmt.Errorf("--vapid-key-path: %w", err)
	}
	if created {
		log.Info("generated a VAPID key; keep this file, a new key breaks every push subscription", "path", f.vapidKeyPath)
	}
	return &push.Config{Key: key, Subject: subject, TTL: f.pushTTL}, nil
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

// splitList splits a comma-separated flag, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
