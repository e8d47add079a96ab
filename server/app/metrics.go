package app

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
)

// newRegistry is a daemon's metrics registry, with the Go runtime's and
// the process's metrics in it.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// registerNATSMetrics exports whether the bus is connected.
func registerNATSMetrics(reg prometheus.Registerer, bus *natsbus.Bus) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kezchat_nats_connected",
		Help: "1 while the connection to NATS (fan-out to other replicas, presence) is up.",
	}, func() float64 {
		if bus.Ping(context.Background()) != nil {
			return 0
		}
		return 1
	}))
}

// registerWriterMetrics exports what the JetStream store's writer does.
func registerWriterMetrics(reg prometheus.Registerer, js *jsstore.Store) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kezchat_jetstream_writer_lease",
			Help: "1 while this replica holds the writer lease and stores every replica's envelopes.",
		}, func() float64 {
			if js.HoldsWriterLease() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_jetstream_writes_total",
			Help: "JetStream writes of envelopes by this replica's writer: atomic batches and envelopes published alone.",
		}, func() float64 { b, _ := js.WriterStats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_jetstream_envelopes_written_total",
			Help: "Envelopes stored by this replica's writer (those other replicas forwarded included).",
		}, func() float64 { _, e := js.WriterStats(); return float64(e) }),
	)
}

// storageHealth is what a store that knows its write path reports.
type storageHealth interface {
	WriteFailures() (full, io uint64)
	Writable() bool
}

// registerStorageMetrics exports whether the store can write and why
// writes failed, for alerts on a filling disk.
func registerStorageMetrics(reg prometheus.Registerer, store any) {
	h, ok := store.(storageHealth)
	if !ok {
		return
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kezchat_store_writable",
			Help: "1 when the last write probe (readiness) committed a large message's worth of bytes; 0 when the disk or the size limit had no room.",
		}, func() float64 {
			if h.Writable() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_store_full_total",
			Help: "Writes refused with storage_full: no room on the disk or under the store's size limit.",
		}, func() float64 { full, _ := h.WriteFailures(); return float64(full) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kezchat_store_io_failures_total",
			Help: "Writes refused with unavailable because the store failed to write.",
		}, func() float64 { _, io := h.WriteFailures(); return float64(io) }),
	)
}

// registerLimitMetrics exports the connection cap, which every open inbox
// stream counts against, so that an alert can compare kezchat_open_streams
// with it.
func registerLimitMetrics(reg prometheus.Registerer, maxConnections int) {
	if maxConnections <= 0 {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kezchat_max_connections",
		Help: "HTTP connections the chat server serves at once (--max-connections); each open inbox stream holds one.",
	}, func() float64 { return float64(maxConnections) }))
}
