// Package natsmetrics exports a nats-server's state as Prometheus metrics,
// read from its HTTP monitoring endpoints (/varz, /jsz, /healthz) at each
// scrape. `kezchat nats-exporter` serves it beside each NATS server the
// operator runs, since the NATS monitoring port speaks JSON, not
// Prometheus' format. Only what the dashboard and the alert rules
// (monitoring/) need is exported.
package natsmetrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Exporter is a prometheus.Collector for the nats-server whose monitoring
// endpoint is at URL (http://127.0.0.1:8222).
type Exporter struct {
	URL    string
	Client *http.Client
	// Timeout bounds one scrape's requests; 5 s when zero.
	Timeout time.Duration
}

type metric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*state) (float64, bool)
}

func gauge(name, help string, value func(*state) (float64, bool)) metric {
	return metric{prometheus.NewDesc(name, help, nil, nil), prometheus.GaugeValue, value}
}

func counter(name, help string, value func(*state) (float64, bool)) metric {
	return metric{prometheus.NewDesc(name, help, nil, nil), prometheus.CounterValue, value}
}

// state is what one scrape read; varz or jsz nil when it could not.
type state struct {
	healthy bool
	varz    *varz
	jsz     *jsz
}

// varz and jsz hold the fields of nats-server's /varz and /jsz answers
// that are exported (server.Varz, server.JSInfo).
type varz struct {
	Connections   int     `json:"connections"`
	InMsgs        int64   `json:"in_msgs"`
	OutMsgs       int64   `json:"out_msgs"`
	InBytes       int64   `json:"in_bytes"`
	OutBytes      int64   `json:"out_bytes"`
	SlowConsumers int64   `json:"slow_consumers"`
	Mem           int64   `json:"mem"`
	CPU           float64 `json:"cpu"`
}

type jsz struct {
	Disabled  bool  `json:"disabled"`
	Memory    int64 `json:"memory"`
	Storage   int64 `json:"storage"`
	Streams   int   `json:"streams"`
	Consumers int   `json:"consumers"`
	Messages  int64 `json:"messages"`
	Config    struct {
		MaxMemory  int64 `json:"max_memory"`
		MaxStorage int64 `json:"max_storage"`
	} `json:"config"`
	Meta *struct {
		Leader      string `json:"leader"`
		ClusterSize int    `json:"cluster_size"`
		Replicas    []struct {
			Current bool `json:"current"`
		} `json:"replicas"`
	} `json:"meta_cluster"`
}

func fromVarz(f func(*varz) float64) func(*state) (float64, bool) {
	return func(s *state) (float64, bool) {
		if s.varz == nil {
			return 0, false
		}
		return f(s.varz), true
	}
}

func fromJSZ(f func(*jsz) float64) func(*state) (float64, bool) {
	return func(s *state) (float64, bool) {
		if s.jsz == nil || s.jsz.Disabled {
			return 0, false
		}
		return f(s.jsz), true
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var metrics = []metric{
	gauge("nats_server_healthy", "1 when the server's /healthz answers ok (JetStream included); 0 when it fails or cannot be reached.",
		func(s *state) (float64, bool) { return boolValue(s.healthy), true }),
	gauge("nats_server_connections", "Client connections open.", fromVarz(func(v *varz) float64 { return float64(v.Connections) })),
	counter("nats_server_in_messages_total", "Messages received from clients and routes.", fromVarz(func(v *varz) float64 { return float64(v.InMsgs) })),
	counter("nats_server_out_messages_total", "Messages sent to clients and routes.", fromVarz(func(v *varz) float64 { return float64(v.OutMsgs) })),
	counter("nats_server_in_bytes_total", "Bytes received from clients and routes.", fromVarz(func(v *varz) float64 { return float64(v.InBytes) })),
	counter("nats_server_out_bytes_total", "Bytes sent to clients and routes.", fromVarz(func(v *varz) float64 { return float64(v.OutBytes) })),
	counter("nats_server_slow_consumers_total", "Clients disconnected because they read too slowly.", fromVarz(func(v *varz) float64 { return float64(v.SlowConsumers) })),
	gauge("nats_server_memory_bytes", "Resident memory of the server process.", fromVarz(func(v *varz) float64 { return float64(v.Mem) })),
	gauge("nats_server_cpu_percent", "CPU the server process uses, in percent of one core.", fromVarz(func(v *varz) float64 { return v.CPU })),
	gauge("nats_jetstream_storage_used_bytes", "Bytes JetStream's file store holds.", fromJSZ(func(j *jsz) float64 { return float64(j.Storage) })),
	gauge("nats_jetstream_storage_reserved_bytes", "JetStream's file store limit (max_file_store).", fromJSZ(func(j *jsz) float64 { return float64(j.Config.MaxStorage) })),
	gauge("nats_jetstream_memory_used_bytes", "Bytes JetStream's memory store holds.", fromJSZ(func(j *jsz) float64 { return float64(j.Memory) })),
	gauge("nats_jetstream_streams", "JetStream streams (KV buckets and object stores included).", fromJSZ(func(j *jsz) float64 { return float64(j.Streams) })),
	gauge("nats_jetstream_consumers", "JetStream consumers.", fromJSZ(func(j *jsz) float64 { return float64(j.Consumers) })),
	gauge("nats_jetstream_messages", "Messages JetStream's streams hold.", fromJSZ(func(j *jsz) float64 { return float64(j.Messages) })),
	gauge("nats_jetstream_meta_cluster_size", "Servers in the JetStream meta group; 1 without a cluster.", fromJSZ(func(j *jsz) float64 {
		if j.Meta == nil || j.Meta.ClusterSize == 0 {
			return 1
		}
		return float64(j.Meta.ClusterSize)
	})),
	gauge("nats_jetstream_meta_leader_known", "1 when this server knows the JetStream meta leader (always, without a cluster); 0 means no quorum.", fromJSZ(func(j *jsz) float64 {
		return boolValue(j.Meta == nil || j.Meta.ClusterSize <= 1 || j.Meta.Leader != "")
	})),
	gauge("nats_jetstream_meta_peers_current", "Meta group peers, this server included, that the meta leader sees current; only the leader knows the others (1 elsewhere).", fromJSZ(func(j *jsz) float64 {
		n := 1
		if j.Meta != nil {
			for _, r := range j.Meta.Replicas {
				if r.Current {
					n++
				}
			}
		}
		return float64(n)
	})),
}

// Describe sends every metric's description.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range metrics {
		ch <- m.desc
	}
}

// Collect reads the server's state and sends what it read: a metric whose
// endpoint failed is left out (nats_server_healthy is 0 then), so no
// stale or invented value is exported.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	timeout := e.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s := e.read(ctx)
	for _, m := range metrics {
		if v, ok := m.value(s); ok {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, v)
		}
	}
}

func (e *Exporter) read(ctx context.Context) *state {
	s := &state{}
	var h struct {
		Status string `json:"status"`
	}
	s.healthy = e.get(ctx, "/healthz", &h) == nil && h.Status == "ok"
	var v varz
	if e.get(ctx, "/varz", &v) == nil {
		s.varz = &v
	}
	var j jsz
	if e.get(ctx, "/jsz", &j) == nil {
		s.jsz = &j
	}
	return s
}

// get decodes the JSON answer of path; a failed health check answers 503
// with a JSON body, which counts as an error.
func (e *Exporter) get(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(e.URL, "/")+path, nil)
	if err != nil {
		return err
	}
	client := e.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(into)
}
