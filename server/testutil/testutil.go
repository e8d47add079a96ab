// Package testutil starts real chat servers and sig-servers for tests: the
// real HTTP API on a loopback port over a real SQLite file (or a real NATS
// JetStream), put together by server/app as `kezchat server` puts them
// together.
package testutil

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server/app"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/sigclient"
)

// Domain is the server name test servers answer for.
const Domain = "chat.test"

// Options change a test server; the zero value has no rate limits,
// quotas or per-address caps.
type Options struct {
	// Config changes the server's app.Config last, after the options
	// below (rate limits, stream tuning, the Service's policy).
	Config func(*app.Config)
	DBPath string // default: a file in t.TempDir()
	// Push, when set, turns Web Push on: Push.Key and Push.Subject are
	// required; AllowEndpoints widens the endpoint policy (a local push
	// service's origin).
	Push           *push.Config
	AllowEndpoints []string
	// SigServerURL, when set, makes the server resolve device keys there
	// through a sigclient.Resolver configured by Keys (default: TTL 0, so
	// every check asks the sig-server, and a 50ms retry delay).
	SigServerURL string
	Keys         func(*sigclient.Config)
	// NATS, when set, makes the server one replica on that NATS: natsbus
	// is its Broker and tells its push sender who streams where.
	// NATSUser and NATSPassword authenticate it.
	NATS                   *NATS
	NATSUser, NATSPassword string
	// JetStream, with NATS, keeps messages and users on NATS JetStream
	// instead of SQLite.
	JetStream bool
	// Callout, when set with NATS, makes the server answer NATS's auth
	// callout requests.
	Callout *natsauth.Config
	// Federation, when set, makes a federated server whose domain is its
	// own loopback address (127.0.0.1:<port>, reached over plain HTTP:
	// Loopback is set), so that several test servers federate with each
	// other. Its limits are off unless set.
	Federation *app.Federation
	// Bind, with Federation, is the address to listen on (default a free
	// port): a test restarts a federated server at its domain with it.
	Bind string
}

// Server is a running test server: app.Server's parts, and where it is.
type Server struct {
	*app.Server
	URL    string
	DBPath string
	stop   func()
}

// Stop stops the server as a shutdown would; a test may start another on
// its DBPath.
func (s *Server) Stop() { s.stop() }

// Logger logs to the test's output when -v is given, else nowhere.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// ServerConfig is the app.Config StartServer runs for opts: a free
// loopback port, no metrics listener, no rate limits.
func ServerConfig(t testing.TB, opts Options) app.Config {
	t.Helper()
	if opts.DBPath == "" {
		opts.DBPath = filepath.Join(t.TempDir(), "kez-chat.db")
	}
	cfg := app.DefaultConfig()
	cfg.Service.Domain = Domain
	cfg.Version = "test"
	cfg.PublicURL = "https://" + Domain
	cfg.Bind, cfg.MetricsBind, cfg.DBPath = "127.0.0.1:0", "", opts.DBPath
	cfg.RegisterLimit, cfg.SendLimit, cfg.FailedAuthLimit, cfg.HandleSendLimit = app.Limit{}, app.Limit{}, app.Limit{}, app.Limit{}
	cfg.SenderQuota, cfg.AddressQuota = app.Quota{}, app.Quota{}
	cfg.TypingLimit = app.Limit{}
	cfg.MaxConnectionsPerAddress, cfg.MaxStreamsPerAddress = 0, 0
	// A test may leave a push service or a client hanging; a stop then
	// abandons what is in flight, as a real shutdown would.
	cfg.ShutdownTimeout = 2 * time.Second
	if opts.NATS != nil {
		ncfg := natsbus.Config{URL: opts.NATS.URL, User: opts.NATSUser, Password: opts.NATSPassword, ReconnectWait: 50 * time.Millisecond}
		cfg.NATS = &ncfg
		if opts.JetStream {
			store := ncfg
			store.ReconnectWait = 20 * time.Millisecond
			cfg.JetStream = &jsstore.Config{NATS: store}
		}
		cfg.Callout = opts.Callout
	}
	if opts.Push != nil {
		cfg.Push, cfg.PushAllow = opts.Push, opts.AllowEndpoints
	}
	if opts.SigServerURL != "" {
		kcfg := sigclient.Config{URL: opts.SigServerURL, RetryAfter: 50 * time.Millisecond, Timeout: 5 * time.Second}
		if opts.Keys != nil {
			opts.Keys(&kcfg)
		}
		cfg.Keys, cfg.SigServerPublicURL = &kcfg, opts.SigServerURL
	}
	if opts.Federation != nil {
		bind := opts.Bind
		if bind == "" {
			bind = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", bind)
		if err != nil {
			t.Fatalf("listening for a federated test server: %v", err)
		}
		fed := *opts.Federation
		fed.Loopback = true
		cfg.Listener, cfg.Federation = ln, &fed
		cfg.Service.Domain = ln.Addr().String()
		cfg.PublicURL = "http://" + cfg.Service.Domain
	}
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	return cfg
}

// StartServer starts a server on 127.0.0.1 and stops it when the test ends.
func StartServer(t testing.TB, opts Options) *Server {
	t.Helper()
	cfg := ServerConfig(t, opts)
	srv, err := app.New(context.Background(), cfg, Logger(t))
	if err != nil {
		t.Fatalf("starting a chat server: %v", err)
	}
	stop := run(t, "chat server", srv.Run)
	return &Server{Server: srv, URL: srv.URL(), DBPath: cfg.DBPath, stop: stop}
}

// run runs a server until the test ends, and fails the test if it does
// not stop cleanly. The returned function stops it sooner.
func run(t testing.TB, what string, serve func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", what, err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// SigOptions change a test sig-server.
type SigOptions struct {
	DBPath string // default: a file in t.TempDir()
	// Now is the directory's clock (time.Now when nil).
	Now func() time.Time
	// PublishLimit limits publications per address; none by default.
	PublishLimit app.Limit
}

// SigServer is a running test sig-server.
type SigServer struct {
	*app.SigServer
	URL    string
	DBPath string
	stop   func()
}

// StartSigServer starts a sig-server on 127.0.0.1, put together as
// `kezchat sig-server` puts it together, and stops it when the test ends.
func StartSigServer(t testing.TB, opts SigOptions) *SigServer {
	t.Helper()
	if opts.DBPath == "" {
		opts.DBPath = filepath.Join(t.TempDir(), "kez-sig.db")
	}
	cfg := app.DefaultSigConfig()
	cfg.Version, cfg.DBPath, cfg.Now = "test", opts.DBPath, opts.Now
	cfg.Bind, cfg.MetricsBind = "127.0.0.1:0", ""
	cfg.PublishLimit = opts.PublishLimit
	cfg.ShutdownTimeout = 2 * time.Second
	srv, err := app.NewSigServer(context.Background(), cfg, Logger(t))
	if err != nil {
		t.Fatalf("starting a sig-server: %v", err)
	}
	s := &SigServer{SigServer: srv, URL: srv.URL(), DBPath: opts.DBPath}
	s.stop = run(t, "sig-server", srv.Run)
	return s
}

// Stop stops the sig-server as a shutdown would, so tests can see what
// clients do while it is down. Its port then refuses connections.
func (s *SigServer) Stop() { s.stop() }

// Eventually polls cond every 10ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
