package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"kez.lat/chat/server/httpapi"
)

// apiServer is a daemon's API server with the project's timeouts and
// header limit. writeTimeout 0 means none: the chat server's SSE streams
// outlive any write timeout.
func apiServer(handler http.Handler, writeTimeout time.Duration, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		// An idle keep-alive holds a connection slot: a minute is plenty
		// for a browser's next request.
		IdleTimeout:    time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// listeners are a daemon's API server and, when it has one, its
// Prometheus /metrics server, bound; the chat server and the sig-server
// serve and stop them the same way.
type listeners struct {
	api     net.Listener
	servers []*http.Server
	lns     []net.Listener
	wg      sync.WaitGroup
	errc    chan error
}

// sideListener is a listener beside the API's: what it serves, for
// errors, and where; an empty bind is none.
type sideListener struct {
	what, bind string
	handler    http.Handler
}

// metricsListener serves Prometheus /metrics for reg on bind.
func metricsListener(bind string, reg prometheus.Gatherer) sideListener {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return sideListener{what: "metrics", bind: bind, handler: mux}
}

// pprofListener serves Go's runtime profiles (/debug/pprof/) on bind. Off
// unless asked: whoever reaches it reads the process's memory profile and
// can make it spend CPU, so it belongs on loopback, for benchmarks and
// debugging.
func pprofListener(bind string) sideListener {
	if bind != "" {
		// The block and mutex profiles (the waits: the store's queue, locks,
		// channel handoffs) record nothing unless sampling is on; about one
		// event in 100 and every block over 10 µs cost little.
		runtime.SetBlockProfileRate(int((10 * time.Microsecond).Nanoseconds()))
		runtime.SetMutexProfileFraction(100)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return sideListener{what: "profiles", bind: bind, handler: mux}
}

// listen binds api's listener on bind, serving connections within limits,
// and a listener for each side that has a bind. On error nothing is left
// bound.
func listen(api *http.Server, ln net.Listener, bind string, limits httpapi.ListenerLimits, sides ...sideListener) (*listeners, error) {
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", bind); err != nil {
			return nil, fmt.Errorf("listening on %s: %w", bind, err)
		}
	}
	l := &listeners{api: ln, servers: []*http.Server{api}, lns: []net.Listener{httpapi.LimitListener(ln, limits)}}
	for _, side := range sides {
		if side.bind == "" {
			continue
		}
		sln, err := net.Listen("tcp", side.bind)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("listening for %s on %s: %w", side.what, side.bind, err)
		}
		l.servers = append(l.servers, &http.Server{Handler: side.handler, ReadHeaderTimeout: 10 * time.Second})
		l.lns = append(l.lns, sln)
	}
	l.errc = make(chan error, len(l.servers))
	return l, nil
}

// serve starts serving on every listener.
func (l *listeners) serve() {
	for i, s := range l.servers {
		l.wg.Go(func() { l.errc <- s.Serve(l.lns[i]) })
	}
}

// wait returns when ctx ends (nil) or a server stops serving (its error).
func (l *listeners) wait(ctx context.Context, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-l.errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// shutdown stops accepting and lets requests in flight finish until ctx
// ends, then closes what is left (connections a client opened and never
// used, which net/http counts as active for 5 s, among them) and waits for
// the servers' goroutines.
func (l *listeners) shutdown(ctx context.Context, log *slog.Logger) {
	for _, s := range l.servers {
		if err := s.Shutdown(ctx); err != nil {
			log.Warn("shutdown incomplete", "err", err)
			s.Close()
		}
	}
	l.wg.Wait()
}

// close releases listeners that never served.
func (l *listeners) close() {
	for _, ln := range l.lns {
		ln.Close()
	}
}
