package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server/natstest"
	"kez.lat/chat/server/testutil"
)

// TestNATSExporterCommandServesARealServersMetrics: `kezchat nats-exporter`
// serves the nats_* metrics of the nats-server it is pointed at, and stops
// with its context.
func TestNATSExporterCommandServesARealServersMetrics(t *testing.T) {
	srv, err := natstest.Start(natstest.Options{Name: "exported", Dir: t.TempDir(), Monitor: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	bind := testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, []string{"nats-exporter", "--nats-monitor-url", fmt.Sprintf("http://%s", srv.Server.MonitorAddr()),
			"--metrics-bind", bind, "--log-format", "text"}, io.Discard, &logs)
	}()
	var body string
	testutil.WaitFor(t, 10*time.Second, "the exporter serves", func() error {
		resp, err := http.Get("http://" + bind + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return nil
	})
	for _, want := range []string{"nats_server_healthy 1", "nats_jetstream_streams 0", "nats_server_connections 0"} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit code %d after its context ended\n%s", code, logs.String())
	}
}
