package app_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"kez.lat/chat/server/app"
	"kez.lat/chat/server/natsauth"
)

func testConfig(t *testing.T) app.Config {
	cfg := app.DefaultConfig()
	cfg.Bind, cfg.MetricsBind = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DBPath = filepath.Join(t.TempDir(), "kez-chat.db")
	return cfg
}

var quiet = slog.New(slog.DiscardHandler)

func TestRunServesUntilItsContextEndsThenClosesEveryPart(t *testing.T) {
	srv, err := app.New(t.Context(), testConfig(t), quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	res, err := http.Get(srv.URL() + "/v1/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("readyz = %d", res.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := srv.Store.Ping(context.Background()); err == nil {
		t.Fatal("the store still answers after Run returned")
	}
	if _, err := http.Get(srv.URL() + "/v1/healthz"); err == nil {
		t.Fatal("the API still answers after Run returned")
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Fatal("a second Run was accepted")
	}
}

func TestProfilesAreServedOnlyWhereAskedAndNeverOnTheAPI(t *testing.T) {
	if app.DefaultConfig().PprofBind != "" {
		t.Fatal("profiles are served by default")
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	cfg := testConfig(t)
	cfg.PprofBind = addr
	srv, err := app.New(t.Context(), cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, tt := range []struct {
		url  string
		want int
	}{
		{"http://" + addr + "/debug/pprof/", http.StatusOK},
		{"http://" + addr + "/debug/pprof/goroutine?debug=1", http.StatusOK},
		{srv.URL() + "/debug/pprof/", http.StatusNotFound},
	} {
		res, err := http.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.want {
			t.Errorf("GET %s = %d, want %d", tt.url, res.StatusCode, tt.want)
		}
	}
}

func TestCloseReleasesAServerThatNeverRan(t *testing.T) {
	srv, err := app.New(t.Context(), testConfig(t), quiet)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr().String()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port is still held: %v", err)
	}
	ln.Close()
	if err := srv.Store.Ping(context.Background()); err == nil {
		t.Fatal("the store is still open")
	}
}

func TestNewRefusesWhatCannotBeWired(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tt := range []struct {
		name   string
		change func(*app.Config)
		want   string
	}{
		{"a callout without NATS", func(c *app.Config) { c.Callout = &natsauth.Config{} }, "needs a NATS connection"},
		{"a taken port", func(c *app.Config) { c.Bind = taken.Addr().String() }, "listening on"},
		{"a taken metrics port", func(c *app.Config) { c.MetricsBind = taken.Addr().String() }, "listening for metrics on"},
		{"a taken profiles port", func(c *app.Config) { c.PprofBind = taken.Addr().String() }, "listening for profiles on"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			tt.change(&cfg)
			if _, err := app.New(t.Context(), cfg, quiet); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestTheSigServerRunsAndStopsTheSameWay(t *testing.T) {
	cfg := app.DefaultSigConfig()
	cfg.Bind, cfg.MetricsBind = "127.0.0.1:0", ""
	cfg.DBPath = filepath.Join(t.TempDir(), "kez-sig.db")
	srv, err := app.NewSigServer(t.Context(), cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	res, err := http.Get(srv.URL() + "/v1/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("readyz = %d", res.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := srv.Store.Ping(context.Background()); err == nil {
		t.Fatal("the key log is still open after Run returned")
	}
}
