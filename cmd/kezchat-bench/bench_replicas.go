package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"kez.lat/chat/server/natstest"
)

// targetReplicaShare is what issue 8 asks of several replicas: together
// they deliver at least this share of one replica's throughput on the same
// cores.
const targetReplicaShare = 0.80

// Values of --replica-sync: how the bench's NATS server syncs JetStream's
// files to disk.
const (
	// syncAlways is what the operator generates for a single NATS server
	// (jetstream { sync_interval: always }): JetStream fsyncs each write
	// before it acknowledges the publish, so a 201 means on disk, as with
	// SQLite.
	syncAlways = "always"
	// syncDefault is nats-server's default: writes go to the OS at once
	// and are fsynced every 2 minutes.
	syncDefault = "default"
	// syncCluster is three clustered NATS servers with the default sync
	// and the stream and buckets on all three (--jetstream-replicas 3), as
	// the operator deploys with nats.replicas 3: a publish is acknowledged
	// once two servers have it, which is its durability.
	syncCluster = "cluster"
)

// replicaResult is what phase 5 measured with one sync setting.
type replicaResult struct {
	sync         string // syncAlways or syncDefault
	replicas     int
	closed, open *loadResult
}

// replicaSyncs is the settings --replica-sync names.
func replicaSyncs(v string) ([]string, error) {
	switch v {
	case syncAlways, syncDefault, syncCluster:
		return []string{v}, nil
	case "both":
		return []string{syncAlways, syncDefault}, nil
	case "all":
		return []string{syncAlways, syncDefault, syncCluster}, nil
	}
	return nil, fmt.Errorf("--replica-sync %q: want always, default, cluster, both or all", v)
}

// replicasLabel is "1 replica" or "n replicas".
func replicasLabel(n int) string {
	if n == 1 {
		return "1 replica"
	}
	return fmt.Sprintf("%d replicas", n)
}

// syncLabel describes a sync setting in the output.
func syncLabel(sync string) string {
	switch sync {
	case syncAlways:
		return "sync_interval: always"
	case syncCluster:
		return "3 NATS servers, 3 stream replicas"
	}
	return "sync_interval default (2 min)"
}

// benchNATS is the NATS servers with JetStream that phase 5's replicas
// share, in the bench process on free loopback ports with their stores in
// a temporary directory: one, or three clustered for syncCluster.
type benchNATS struct {
	one     *natstest.Server
	cluster *natstest.Cluster
	dir     string
}

func startBenchNATS(sync string) (*benchNATS, error) {
	dir, err := os.MkdirTemp("", "kezchat-bench-nats-")
	if err != nil {
		return nil, err
	}
	n := &benchNATS{dir: dir}
	opts := natstest.Options{
		Name: "kezchat-bench",
		Dir:  dir,
		// The replicas' inbox subscriptions and JetStream's direct gets
		// carry bursts of up to a catch-up page each.
		MaxPending: 64 << 20,
		SyncAlways: sync == syncAlways,
	}
	if sync == syncCluster {
		n.cluster, err = natstest.StartCluster(3, opts)
	} else {
		n.one, err = natstest.Start(opts)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// url is the client URL of each server, comma-separated as nats.go takes
// them.
func (n *benchNATS) url() string {
	if n.cluster != nil {
		return n.cluster.URL()
	}
	return n.one.URL
}

// streamReplicas is --jetstream-replicas for the replicas: one per server.
func (n *benchNATS) streamReplicas() int {
	if n.cluster != nil {
		return len(n.cluster.Servers)
	}
	return 1
}

func (n *benchNATS) stop() {
	if n.cluster != nil {
		n.cluster.Shutdown()
	} else {
		n.one.Shutdown()
	}
	os.RemoveAll(n.dir)
}

// runReplicas is phase 5: for each sync setting, a fresh NATS server with
// JetStream and cfg.replicas chat servers on it (--store jetstream), with
// the recipients' streams and the POSTs spread over the replicas, so that
// half the deliveries (with two) cross NATS; then the load phases as on the
// single SQLite server.
func runReplicas(ctx context.Context, cfg benchConfig, hc *http.Client, tag string, p *benchPrinter, stderr io.Writer) ([]*replicaResult, error) {
	syncs, err := replicaSyncs(cfg.replicaSync)
	if err != nil {
		return nil, err
	}
	var results []*replicaResult
	for k, sync := range syncs {
		res, err := runReplicaSet(ctx, cfg, hc, fmt.Sprintf("%s%d", tag, k), sync, p, stderr)
		if err != nil {
			return nil, fmt.Errorf("%s on JetStream (%s): %w", replicasLabel(cfg.replicas), syncLabel(sync), benchErr(ctx, err))
		}
		results = append(results, res)
	}
	return results, nil
}

func runReplicaSet(ctx context.Context, cfg benchConfig, hc *http.Client, tag, sync string, p *benchPrinter, stderr io.Writer) (*replicaResult, error) {
	nats, err := startBenchNATS(sync)
	if err != nil {
		return nil, err
	}
	defer nats.stop()
	var targets []*benchTarget
	defer func() {
		hc.CloseIdleConnections()
		for _, t := range targets {
			t.stop(stderr)
		}
	}()
	// One after the other: each creates or updates the stream and buckets.
	for range cfg.replicas {
		t, err := startBenchServerWith(ctx, cfg, stderr, false, []string{
			"--store", "jetstream", "--nats-url", nats.url(), "--jetstream-replicas", strconv.Itoa(nats.streamReplicas())})
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	var desc []string
	for _, t := range targets {
		desc = append(desc, fmt.Sprintf("%s (pid %d)", t.url, t.cmd.Process.Pid))
	}
	p.printf("\nphase 5 on %s sharing NATS JetStream at %s (in the bench process, %s, temporary store): %s\n",
		replicasLabel(len(targets)), nats.url(), syncLabel(sync), strings.Join(desc, ", "))
	run, err := startLoad(ctx, cfg, targets, hc, tag, p)
	if err != nil {
		return nil, fmt.Errorf("setting up: %w", err)
	}
	defer run.close()
	run.phase1 = fmt.Sprintf("phase 5, maximum throughput, %s on JetStream (%s)", replicasLabel(len(targets)), syncLabel(sync))
	run.phase2 = fmt.Sprintf("phase 5, latency at a fixed rate, %s on JetStream (%s)", replicasLabel(len(targets)), syncLabel(sync))
	res := &replicaResult{sync: sync, replicas: len(targets)}
	if res.closed, err = run.closedLoop(ctx); err != nil {
		return nil, fmt.Errorf("closed loop: %w", err)
	}
	if cfg.rate > 0 {
		p.printf("\n")
		if res.open, err = run.openLoop(ctx); err != nil {
			return nil, fmt.Errorf("open loop: %w", err)
		}
	}
	return res, nil
}
