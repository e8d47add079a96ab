package main

import (
	"context"
	"fmt"
	"io"

	"kez.lat/chat/server/app"
)

// sigServerFlags are the sig-server's settings; each also comes from its
// KEZ_ environment variable.
type sigServerFlags struct {
	log            logFlags
	trustedProxies string
}

func runSigServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	cfg := app.DefaultSigConfig()
	var f sigServerFlags
	fs := newFlagSet("sig-server", "sig-server [flags]\n\nRuns the sig-server: the signed, append-only directory of each identity's keys.", stderr)
	fs.StringVar(&cfg.Bind, "bind", cfg.Bind, "address to serve HTTP on")
	fs.StringVar(&cfg.DBPath, "db", cfg.DBPath, "SQLite database file of the key log")
	fs.StringVar(&cfg.MetricsBind, "metrics-bind", cfg.MetricsBind, "address to serve Prometheus /metrics on; empty disables")
	f.log.register(fs, "text")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed")
	fs.Float64Var(&cfg.PublishLimit.Rate, "publish-rate", cfg.PublishLimit.Rate, fmt.Sprintf("key document publications per second per client address, burst %d (0 disables)", cfg.PublishLimit.Burst))
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "HTTP connections served at once")
	fs.IntVar(&cfg.MaxConnectionsPerAddress, "max-connections-per-address", cfg.MaxConnectionsPerAddress, "HTTP connections one client address (an IPv6 /64) may hold; trusted proxies are not capped (0: no cap)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long SIGTERM waits for requests in flight")
	log, err := parseDaemonFlags(fs, args, &f.log, stderr)
	if err != nil {
		return err
	}
	if cfg.TrustedProxies, err = parsePrefixes(f.trustedProxies); err != nil {
		return err
	}
	cfg.Version = version
	srv, err := app.NewSigServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
