package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
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

// benchNATS is the NATS server with JetStream that phase 5's replicas
// share, embedded in the bench process on a free loopback port with its
// store in a temporary directory.
type benchNATS struct {
	srvs []*natsserver.Server
	dir  string
}

func startBenchNATS(sync string) (*benchNATS, error) {
	dir, err := os.MkdirTemp("", "kezchat-bench-nats-")
	if err != nil {
		return nil, err
	}
	n := &benchNATS{dir: dir}
	servers := 1
	var routes []*url.URL
	var routePorts []int
	if sync == syncCluster {
		servers = 3
		for range servers {
			port, err := freeLoopbackPort()
			if err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
			routePorts = append(routePorts, port)
			routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", port)})
		}
	}
	for i := range servers {
		opts := &natsserver.Options{
			ServerName: fmt.Sprintf("kezchat-bench-%d", i),
			Host:       "127.0.0.1",
			Port:       natsserver.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, strconv.Itoa(i)),
			NoLog:      true,
			NoSigs:     true,
			// The replicas' inbox subscriptions and JetStream's direct gets
			// carry bursts of up to a catch-up page each.
			MaxPending: 64 << 20,
			SyncAlways: sync == syncAlways,
		}
		if routes != nil {
			opts.Cluster = natsserver.ClusterOpts{Name: "kezchat-bench", Host: "127.0.0.1", Port: routePorts[i]}
			opts.Routes = routes
		}
		s, err := natsserver.NewServer(opts)
		if err != nil {
			n.stop()
			return nil, fmt.Errorf("configuring nats-server: %w", err)
		}
		s.Start()
		n.srvs = append(n.srvs, s)
		if !s.ReadyForConnections(10 * time.Second) {
			n.stop()
			return nil, errors.New("nats-server was not ready within 10s")
		}
	}
	// A cluster takes streams once JetStream has elected a meta leader
	// that every server follows and that has heard from every server.
	deadline := time.Now().Add(30 * time.Second)
	for !n.jetStreamReady() {
		if time.Now().After(deadline) {
			n.stop()
			return nil, errors.New("the NATS cluster's JetStream was not ready within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n, nil
}

func (n *benchNATS) jetStreamReady() bool {
	if len(n.srvs) == 1 {
		return true
	}
	leader := false
	for _, s := range n.srvs {
		if !s.JetStreamIsCurrent() {
			return false
		}
		if s.JetStreamIsLeader() {
			leader = len(s.JetStreamClusterPeers()) == len(n.srvs)
		}
	}
	return leader
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 a moment ago.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// url is the client URL of each server, comma-separated as nats.go takes
// them.
func (n *benchNATS) url() string {
	var urls []string
	for _, s := range n.srvs {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// streamReplicas is --jetstream-replicas for the replicas: one per server.
func (n *benchNATS) streamReplicas() int { return len(n.srvs) }

func (n *benchNATS) stop() {
	for _, s := range n.srvs {
		s.Shutdown()
		s.WaitForShutdown()
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
