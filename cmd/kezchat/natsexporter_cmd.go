package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"kez.lat/chat/server/natsmetrics"
)

// runNATSExporter serves a nats-server's monitoring endpoint as Prometheus
// metrics: the operator runs it beside each NATS server it deploys.
func runNATSExporter(ctx context.Context, args []string, _, stderr io.Writer) error {
	var (
		logs        logFlags
		monitorURL  string
		metricsBind string
	)
	fs := newFlagSet("nats-exporter", "nats-exporter [flags]\n\nServes a nats-server's /varz, /jsz and /healthz as Prometheus metrics (nats_*), read at each scrape.", stderr)
	fs.StringVar(&monitorURL, "nats-monitor-url", "http://127.0.0.1:8222", "the nats-server's HTTP monitoring endpoint")
	fs.StringVar(&metricsBind, "metrics-bind", ":7777", "address to serve Prometheus /metrics on")
	logs.register(fs, "json")
	log, err := parseDaemonFlags(fs, args, &logs, stderr)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&natsmetrics.Exporter{URL: monitorURL})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", metricsBind)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info("serving NATS metrics", "addr", ln.Addr().String(), "nats_monitor_url", monitorURL)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
