package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServers are a daemon's API server and, when it has one, its
// Prometheus /metrics server: what `kezchat server` and `kezchat
// sig-server` both run and shut down the same way.
type httpServers struct {
	servers []*http.Server
	wg      sync.WaitGroup
	errc    chan error
}

// apiServer is a daemon's API server with the project's timeouts and
// header limit. writeTimeout 0 means none: the chat server's SSE streams
// outlive any write timeout.
func apiServer(handler http.Handler, writeTimeout time.Duration, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serveHTTP serves api on ln and, unless metricsBind is empty, reg's
// metrics on metricsBind. On error nothing is left serving; the caller
// still owns ln.
func serveHTTP(api *http.Server, ln net.Listener, metricsBind string, reg prometheus.Gatherer) (*httpServers, error) {
	h := &httpServers{servers: []*http.Server{api}}
	listeners := []net.Listener{ln}
	if metricsBind != "" {
		mln, err := net.Listen("tcp", metricsBind)
		if err != nil {
			return nil, fmt.Errorf("listening for metrics on %s: %w", metricsBind, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		h.servers = append(h.servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second})
		listeners = append(listeners, mln)
	}
	h.errc = make(chan error, len(h.servers))
	for i, s := range h.servers {
		h.wg.Go(func() { h.errc <- s.Serve(listeners[i]) })
	}
	return h, nil
}

// wait returns when ctx ends (nil) or a server stops serving (its error).
func (h *httpServers) wait(ctx context.Context, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-h.errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// shutdown stops accepting and lets requests in flight finish until ctx
// ends, then waits for the servers' goroutines.
func (h *httpServers) shutdown(ctx context.Context, log *slog.Logger) {
	for _, s := range h.servers {
		if err := s.Shutdown(ctx); err != nil {
			log.Warn("shutdown incomplete", "err", err)
		}
	}
	h.wg.Wait()
}
