package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"kez.lat/chat/server"
	"kez.lat/chat/server/httpapi"
	"kez.lat/chat/server/sqlite"
)

// sigServerFlags are the sig-server's settings; each also comes from its
// KEZ_ environment variable.
type sigServerFlags struct {
	bind, db, metricsBind string
	logFormat, logLevel   string
	trustedProxies        string
	publishRate           float64
	maxConns              int
	shutdownTimeout       time.Duration
}

func runSigServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	var f sigServerFlags
	fs := newFlagSet("sig-server", "sig-server [flags]\n\nRuns the sig-server: the signed, append-only directory of each identity's keys.", stderr)
	fs.StringVar(&f.bind, "bind", "127.0.0.1:7878", "address to serve HTTP on")
	fs.StringVar(&f.db, "db", "./kez-sig.db", "SQLite database file of the key log")
	fs.StringVar(&f.metricsBind, "metrics-bind", "127.0.0.1:9470", "address to serve Prometheus /metrics on; empty disables")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed")
	fs.Float64Var(&f.publishRate, "publish-rate", 1, "key document publications per second per client address, burst 20 (0 disables)")
	fs.IntVar(&f.maxConns, "max-connections", 4096, "HTTP connections served at once")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long SIGTERM waits for requests in flight")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	proxies, err := parsePrefixes(f.trustedProxies)
	if err != nil {
		return err
	}

	store, err := sqlite.OpenKeyLog(ctx, f.db, log)
	if err != nil {
		return fmt.Errorf("opening key log %s: %w", f.db, err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing key log", "err", err)
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sigAPI := httpapi.NewSigServer(httpapi.SigConfig{
		Version:        version,
		TrustedProxies: proxies,
		PublishLimiter: server.NewRateLimiter(f.publishRate, 20, 100_000),
	}, server.NewKeyDirectory(store, log, nil), log, reg)

	ln, err := net.Listen("tcp", f.bind)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.bind, err)
	}
	srvs, err := serveHTTP(apiServer(sigAPI.Handler(), 30*time.Second, log), httpapi.LimitListener(ln, f.maxConns), f.metricsBind, reg)
	if err != nil {
		ln.Close()
		return err
	}
	log.Info("serving sig-server", "bind", ln.Addr().String(), "metrics", f.metricsBind, "db", f.db, "version", version)

	serveErr := srvs.wait(ctx, log)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	srvs.shutdown(shutdownCtx, log)
	if serveErr != nil {
		return serveErr
	}
	log.Info("stopped")
	return nil
}
