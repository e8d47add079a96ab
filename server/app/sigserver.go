package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
	"kez.lat/chat/server/httpapi"
	"kez.lat/chat/server/sqlite"
)

// SigConfig is everything that decides how a sig-server is put together.
type SigConfig struct {
	// Version is reported by /v1/healthz and logged at start.
	Version string
	// DBPath is the key log's SQLite database.
	DBPath string
	// Bind is the API's listen address; MetricsBind is Prometheus
	// /metrics's, or empty for none.
	Bind, MetricsBind string
	// MaxConnections bounds the API's connections at once,
	// MaxConnectionsPerAddress those of one client address (0: no cap).
	MaxConnections, MaxConnectionsPerAddress int
	// ShutdownTimeout bounds how long a stopping sig-server waits for
	// requests in flight.
	ShutdownTimeout time.Duration
	// TrustedProxies are the networks whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// PublishLimit limits key document publications per client address:
	// anyone can make a primary key, so the signature alone bounds nothing.
	PublishLimit Limit
	// Now is the directory's clock (time.Now when nil).
	Now func() time.Time
}

// DefaultSigConfig is the defaults `kezchat sig-server --help` documents.
func DefaultSigConfig() SigConfig {
	return SigConfig{
		Version:                  "dev",
		DBPath:                   "./kez-sig.db",
		Bind:                     "127.0.0.1:7878",
		MetricsBind:              "127.0.0.1:9470",
		MaxConnections:           4096,
		MaxConnectionsPerAddress: 64,
		ShutdownTimeout:          10 * time.Second,
		PublishLimit:             Limit{Rate: 1, Burst: 20},
	}
}

// SigServer is a sig-server whose parts are made and whose listeners are
// bound; Run serves it.
type SigServer struct {
	Store     *sqlite.KeyLog
	Directory *server.KeyDirectory
	API       *httpapi.SigServer
	Metrics   *prometheus.Registry

	daemon
}

// NewSigServer opens the key log and binds the sig-server's listeners; on
// error nothing is left open.
func NewSigServer(ctx context.Context, cfg SigConfig, log *slog.Logger) (*SigServer, error) {
	store, err := sqlite.OpenKeyLog(ctx, cfg.DBPath, log)
	if err != nil {
		return nil, fmt.Errorf("opening key log %s: %w", cfg.DBPath, err)
	}
	s := &SigServer{Store: store, Metrics: newRegistry(), daemon: daemon{log: log, shutdownTimeout: cfg.ShutdownTimeout}}
	s.onClose(func() error {
		if err := store.Close(); err != nil {
			return fmt.Errorf("closing key log: %w", err)
		}
		return nil
	})
	s.Directory = server.NewKeyDirectory(store, log, cfg.Now)
	s.API = httpapi.NewSigServer(httpapi.SigConfig{
		Version:        cfg.Version,
		TrustedProxies: cfg.TrustedProxies,
		PublishLimiter: cfg.PublishLimit.limiter(),
	}, s.Directory, log, s.Metrics)
	s.http, err = listen(apiServer(s.API.Handler(), 30*time.Second, log), nil, cfg.Bind, httpapi.ListenerLimits{
		Total: cfg.MaxConnections, PerAddress: cfg.MaxConnectionsPerAddress, Trusted: cfg.TrustedProxies,
	}, metricsListener(cfg.MetricsBind, s.Metrics))
	if err != nil {
		s.close()
		return nil, err
	}
	s.started = func() {
		log.Info("serving sig-server", "bind", s.Addr().String(), "metrics", cfg.MetricsBind, "db", cfg.DBPath, "version", cfg.Version)
	}
	return s, nil
}
