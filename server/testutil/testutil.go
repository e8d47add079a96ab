// Package testutil starts real chat servers for tests: the real HTTP API on
// a loopback port over a real SQLite file, wired as cmd/kezchat wires them.
package testutil

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
	"kez.lat/chat/server/httpapi"
	"kez.lat/chat/server/membus"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/server/sqlite"
)

// Domain is the server name test servers answer for.
const Domain = "chat.test"

// Options change a test server's policy; the zero value has no rate limits.
type Options struct {
	Config    func(*server.Config)
	HTTP      func(*httpapi.Config)
	DBPath    string // default: a file in t.TempDir()
	SendLimit *server.RateLimiter
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
	// Callout, when set with NATS, makes the server answer NATS's auth
	// callout requests.
	Callout *natsauth.Config
	// Store, when set, opens the store instead of SQLite at DBPath.
	Store func(t testing.TB) server.Store
}

// Server is a running test server.
type Server struct {
	URL     string
	DBPath  string
	Service *server.Service
	Store   server.Store
	// Bus is the NATS broker when Options.NATS was set.
	Bus *natsbus.Bus
	API *httpapi.Server
	// Metrics is the registry the server's metrics are in.
	Metrics *prometheus.Registry
	// Keys is the resolver of device keys when SigServerURL was set.
	Keys *sigclient.Resolver
	http *http.Server
}

// Logger logs to the test's output when -v is given, else nowhere.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// StartServer starts a server on 127.0.0.1 and stops it when the test ends.
func StartServer(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.DBPath == "" {
		opts.DBPath = filepath.Join(t.TempDir(), "kez-chat.db")
	}
	log := Logger(t)
	ctx := context.Background()
	var store server.Store
	if opts.Store != nil {
		store = opts.Store(t)
	} else {
		db, err := sqlite.Open(ctx, opts.DBPath, log)
		if err != nil {
			t.Fatalf("opening %s: %v", opts.DBPath, err)
		}
		store = db
	}
	cfg := server.DefaultConfig()
	cfg.Domain = Domain
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	var broker server.Broker = membus.New()
	var bus *natsbus.Bus
	if opts.NATS != nil {
		var err error
		bus, err = natsbus.New(natsbus.Config{URL: opts.NATS.URL, User: opts.NATSUser, Password: opts.NATSPassword, ReconnectWait: 50 * time.Millisecond}, log)
		if err != nil {
			t.Fatalf("natsbus: %v", err)
		}
		broker = bus
	}
	svc := server.NewService(cfg, store, broker, log)
	svc.SendLimiter = opts.SendLimit
	if bus != nil && opts.Callout != nil {
		co, err := natsauth.Start(bus.Conn(), *opts.Callout, svc, log)
		if err != nil {
			t.Fatalf("auth callout: %v", err)
		}
		if err := bus.Conn().Flush(); err != nil {
			t.Fatalf("auth callout: %v", err)
		}
		t.Cleanup(co.Close)
	}
	reg := prometheus.NewRegistry()
	hcfg := httpapi.Config{Version: "test", PublicURL: "https://" + Domain}
	var sender *push.Sender
	if opts.Push != nil {
		policy, err := push.NewPolicy(opts.AllowEndpoints)
		if err != nil {
			t.Fatalf("push policy: %v", err)
		}
		pcfg := *opts.Push
		if bus != nil {
			pcfg.Presence = bus
		}
		sender = push.NewSender(pcfg, store, policy, log, reg)
		sender.Start()
		svc.Pusher, svc.Endpoints = sender, policy
		hcfg.VAPIDPublicKey = push.PublicKey(opts.Push.Key)
	}
	var keys *sigclient.Resolver
	var err error
	if opts.SigServerURL != "" {
		kcfg := sigclient.Config{URL: opts.SigServerURL, RetryAfter: 50 * time.Millisecond, Timeout: 5 * time.Second}
		if opts.Keys != nil {
			opts.Keys(&kcfg)
		}
		if keys, err = sigclient.New(kcfg, log, reg); err != nil {
			t.Fatalf("sig-server resolver: %v", err)
		}
		svc.Keys = keys
		hcfg.SigServerURL = opts.SigServerURL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	url := "http://" + ln.Addr().String()
	if opts.HTTP != nil {
		opts.HTTP(&hcfg)
	}
	api := httpapi.New(hcfg, svc, log, reg)
	hs := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	s := &Server{URL: url, DBPath: opts.DBPath, Service: svc, Store: store, Bus: bus, API: api, Metrics: reg, Keys: keys, http: hs}
	t.Cleanup(func() {
		api.CloseStreams()
		// Requests in flight finish; connections a client opened but never
		// used (which net/http counts as active for 5s) are simply closed.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		if sender != nil {
			// A test may leave its push service hanging; the sender then
			// abandons what is in flight, as it would at a real shutdown.
			if err := sender.Close(ctx); err != nil {
				t.Logf("push sender abandoned work at shutdown: %v", err)
			}
		}
		if bus != nil {
			bus.Close()
		}
		if err := store.Close(); err != nil {
			t.Errorf("closing store: %v", err)
		}
	})
	return s
}

// SigOptions change a test sig-server.
type SigOptions struct {
	DBPath string // default: a file in t.TempDir()
	// Now is the directory's clock (time.Now when nil).
	Now            func() time.Time
	PublishLimiter *server.RateLimiter
}

// SigServer is a running test sig-server.
type SigServer struct {
	URL       string
	DBPath    string
	Store     *sqlite.KeyLog
	Directory *server.KeyDirectory
	API       *httpapi.SigServer
	Metrics   *prometheus.Registry
	http      *http.Server
	stopOnce  sync.Once
}

// StartSigServer starts a sig-server on 127.0.0.1, wired as `kezchat
// sig-server` wires it, and stops it when the test ends.
func StartSigServer(t testing.TB, opts SigOptions) *SigServer {
	t.Helper()
	if opts.DBPath == "" {
		opts.DBPath = filepath.Join(t.TempDir(), "kez-sig.db")
	}
	log := Logger(t)
	store, err := sqlite.OpenKeyLog(context.Background(), opts.DBPath, log)
	if err != nil {
		t.Fatalf("opening %s: %v", opts.DBPath, err)
	}
	dir := server.NewKeyDirectory(store, log, opts.Now)
	reg := prometheus.NewRegistry()
	api := httpapi.NewSigServer(httpapi.SigConfig{Version: "test", PublishLimiter: opts.PublishLimiter}, dir, log, reg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	hs := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	s := &SigServer{URL: "http://" + ln.Addr().String(), DBPath: opts.DBPath, Store: store, Directory: dir, API: api, Metrics: reg, http: hs}
	t.Cleanup(func() {
		s.Stop()
		if err := store.Close(); err != nil {
			t.Errorf("closing key log: %v", err)
		}
	})
	return s
}

// Stop stops serving HTTP (the store stays open until the test ends), so
// tests can see what clients do while the sig-server is down. Its port
// then refuses connections.
func (s *SigServer) Stop() {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.http.Close()
		}
	})
}

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
