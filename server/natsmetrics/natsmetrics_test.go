package natsmetrics

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server/natstest"
)

// scrape gathers e's metrics as name → value.
func scrape(t *testing.T, e *Exporter) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	got := map[string]float64{}
	for _, f := range families {
		m := f.GetMetric()[0]
		switch {
		case m.Gauge != nil:
			got[f.GetName()] = m.GetGauge().GetValue()
		case m.Counter != nil:
			got[f.GetName()] = m.GetCounter().GetValue()
		}
	}
	return got
}

// TestExporterFollowsARealServer: against a real nats-server, the
// exported values move with what clients do (a stream made, messages
// stored), and when the server is gone the health turns 0 and its other
// metrics disappear rather than keep stale values.
func TestExporterFollowsARealServer(t *testing.T) {
	srv, err := natstest.Start(natstest.Options{Name: "exported", Dir: t.TempDir(), Monitor: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	e := &Exporter{URL: fmt.Sprintf("http://%s", srv.Server.MonitorAddr())}

	before := scrape(t, e)
	for name, want := range map[string]float64{
		"nats_server_healthy": 1, "nats_jetstream_streams": 0, "nats_jetstream_meta_cluster_size": 1,
		"nats_jetstream_meta_leader_known": 1, "nats_server_connections": 0,
	} {
		if got, ok := before[name]; !ok || got != want {
			t.Errorf("before: %s = %v (exported %v), want %v", name, got, ok, want)
		}
	}
	if before["nats_jetstream_storage_reserved_bytes"] <= 0 {
		t.Errorf("nats_jetstream_storage_reserved_bytes = %v, want the store's limit", before["nats_jetstream_storage_reserved_bytes"])
	}

	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "inbox", Subjects: []string{"inbox.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := js.Publish(ctx, "inbox.alice", fmt.Appendf(nil, "message %d", i)); err != nil {
			t.Fatal(err)
		}
	}

	after := scrape(t, e)
	for name, want := range map[string]float64{
		"nats_jetstream_streams": 1, "nats_jetstream_messages": 10, "nats_server_connections": 1,
	} {
		if got := after[name]; got != want {
			t.Errorf("after: %s = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"nats_server_in_messages_total", "nats_server_in_bytes_total", "nats_jetstream_storage_used_bytes"} {
		if after[name] <= before[name] {
			t.Errorf("%s did not grow: %v, then %v", name, before[name], after[name])
		}
	}

	nc.Close()
	srv.Shutdown()
	gone := scrape(t, e)
	if gone["nats_server_healthy"] != 0 {
		t.Errorf("nats_server_healthy = %v with the server down, want 0", gone["nats_server_healthy"])
	}
	if len(gone) != 1 {
		t.Errorf("with the server down exported %v, want only nats_server_healthy", gone)
	}
}

// TestExporterReportsTheMetaGroupOfACluster: in a cluster of three every
// server knows the meta leader and the group's size, and the leader sees
// its two peers current.
func TestExporterReportsTheMetaGroupOfACluster(t *testing.T) {
	c, err := natstest.StartCluster(3, natstest.Options{Name: "exported", Dir: t.TempDir(), Monitor: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	leaders := 0
	for _, s := range c.Servers {
		got := scrape(t, &Exporter{URL: fmt.Sprintf("http://%s", s.MonitorAddr())})
		if got["nats_jetstream_meta_cluster_size"] != 3 || got["nats_jetstream_meta_leader_known"] != 1 {
			t.Errorf("%s: cluster size %v, leader known %v; want 3 and 1", s.Name(),
				got["nats_jetstream_meta_cluster_size"], got["nats_jetstream_meta_leader_known"])
		}
		if s.JetStreamIsLeader() {
			leaders++
			if got["nats_jetstream_meta_peers_current"] != 3 {
				t.Errorf("the leader sees %v peers current, want 3", got["nats_jetstream_meta_peers_current"])
			}
		}
	}
	if leaders != 1 {
		t.Errorf("%d meta leaders", leaders)
	}
}
