package controllers

// Helpers of BenchmarkOperatorBinary (bench_test.go): the operator as a
// process of its own, its Prometheus metrics, and a watch of the
// workloads it makes.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// operatorProcess is `kezchat operator` running as a process of its own,
// as a cluster admin runs it: from a kubeconfig, with default flags but
// for the addresses it serves metrics and probes on.
type operatorProcess struct {
	cmd     *exec.Cmd
	logPath string
	metrics string // host:port of /metrics
	probes  string // host:port of /readyz
	exited  chan struct{}
	waitErr error // once exited is closed
}

// startOperator starts bin's operator against the cluster of kubeconfig,
// serving on metrics and probes, its log (stderr and stdout) to logPath.
// It is killed when tb ends, unless stopped before.
func startOperator(tb testing.TB, bin, kubeconfig, metrics, probes, logPath string) *operatorProcess {
	tb.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "operator", "--metrics-bind="+metrics, "--health-probe-bind="+probes)
	// Default flags: no KEZ_ variable of this environment sets one.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEZ_") && !strings.HasPrefix(kv, "KUBECONFIG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s operator: %v", bin, err)
	}
	p := &operatorProcess{cmd: cmd, logPath: logPath, metrics: metrics, probes: probes, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// fatalf fails tb with the tail of the operator's log.
func (p *operatorProcess) fatalf(tb testing.TB, format string, args ...any) {
	tb.Helper()
	tb.Fatalf("%s\n--- last lines of the operator's log %s:\n%s", fmt.Sprintf(format, args...), p.logPath, p.logTail(40))
}

// logTail is the last n lines of the operator's log.
func (p *operatorProcess) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// checkRunning fails tb if the operator has exited.
func (p *operatorProcess) checkRunning(tb testing.TB) {
	tb.Helper()
	select {
	case <-p.exited:
		p.fatalf(tb, "the operator exited: %v", p.waitErr)
	default:
	}
}

// waitReady waits for the operator's /readyz to answer 200.
func (p *operatorProcess) waitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		p.checkRunning(tb)
		resp, err := http.Get("http://" + p.probes + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("readyz %s", resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	p.fatalf(tb, "the operator was not ready after %s: %v", timeout, last)
}

// stop sends SIGTERM and waits for the operator to exit; the error is its
// exit's, nil for status 0.
func (p *operatorProcess) stop(tb testing.TB) error {
	tb.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.waitErr
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("still running a minute after SIGTERM, killed")
	}
}

// peakRSS is the operator's peak resident set size so far, in bytes
// (VmHWM of /proc/<pid>/status).
func (p *operatorProcess) peakRSS(tb testing.TB) float64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		tb.Fatalf("reading the operator's peak RSS: %v", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				tb.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kib * 1024
		}
	}
	tb.Fatalf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
	return 0
}

// scrape reads the operator's /metrics.
func (p *operatorProcess) scrape() (metricSamples, error) {
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// Metrics of the operator that tell whether it is busy.
const (
	restRequestsMetric   = "rest_client_requests_total"
	workqueueDepthMetric = "workqueue_depth"
	reconcilesMetric     = "controller_runtime_reconcile_total"
)

// waitQuiet waits until the operator is quiet: nothing in the KezChat
// work queue, at least minReconciles KezChat reconciles done, and its
// count of API requests the same over quietScrapes scrapes a second
// apart. It returns the last scrape.
func (p *operatorProcess) waitQuiet(tb testing.TB, minReconciles int, timeout time.Duration) metricSamples {
	tb.Helper()
	const quietScrapes = 4
	deadline := time.Now().Add(timeout)
	var (
		last   metricSamples
		stable int
		prev   = -1.0
		why    string
	)
	for {
		p.checkRunning(tb)
		m, err := p.scrape()
		if err != nil {
			p.fatalf(tb, "scraping the operator: %v", err)
		}
		last = m
		requests := m.sum(restRequestsMetric, nil)
		depth := m.sum(workqueueDepthMetric, map[string]string{"name": "kezchat"})
		reconciles := m.sum(reconcilesMetric, map[string]string{"controller": "kezchat"})
		switch {
		case depth > 0:
			stable, why = 0, fmt.Sprintf("%v KezChats in the work queue", depth)
		case reconciles < float64(minReconciles):
			stable, why = 0, fmt.Sprintf("%v of %d reconciles", reconciles, minReconciles)
		case requests != prev:
			stable, why = 1, fmt.Sprintf("API requests still moving (%v)", requests)
		default:
			stable++
		}
		prev = requests
		if stable >= quietScrapes {
			return last
		}
		if time.Now().After(deadline) {
			p.fatalf(tb, "the operator was not quiet after %s: %s", timeout, why)
		}
		time.Sleep(time.Second)
	}
}

// metricSample is one line of Prometheus's text format.
type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

type metricSamples []metricSample

// sum adds up the samples of name whose labels include match.
func (ms metricSamples) sum(name string, match map[string]string) float64 {
	var total float64
next:
	for _, s := range ms {
		if s.name != name {
			continue
		}
		for k, v := range match {
			if s.labels[k] != v {
				continue next
			}
		}
		total += s.value
	}
	return total
}

// by adds up the samples of name by the value of their label.
func (ms metricSamples) by(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ms {
		if s.name == name {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// parseMetrics reads the counters and gauges of Prometheus's text
// format, with Prometheus's own parser.
func parseMetrics(r io.Reader) (metricSamples, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	var out metricSamples
	for name, f := range families {
		for _, m := range f.GetMetric() {
			s := metricSample{name: name, labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.value = m.GetGauge().GetValue()
			case m.Untyped != nil:
				s.value = m.GetUntyped().GetValue()
			default: // histograms and summaries: the bench reads none
				continue
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// formatCounts is counts as "GET 812, PATCH 3", in order of the keys.
func formatCounts(counts map[string]float64) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// workloadWatch records when each Deployment and StatefulSet of a
// namespace first appeared, from a watch of their metadata (one list at
// the start, then events), so that waiting for thousands of them costs
// the API server nothing more.
type workloadWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time // workloadKey → first seen
}

// workloadKey names a workload in a workloadWatch.
func workloadKey(kind, name string) string { return kind + "/" + name }

// watchWorkloads starts watching the Deployments and StatefulSets of
// namespace, until tb ends.
func watchWorkloads(tb testing.TB, cfg *rest.Config, namespace string) *workloadWatch {
	tb.Helper()
	c, err := cache.New(cfg, cache.Options{Scheme: testScheme, DefaultNamespaces: map[string]cache.Config{namespace: {}}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Start(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	w := &workloadWatch{seen: map[string]time.Time{}}
	for _, kind := range []string{"Deployment", "StatefulSet"} {
		obj := &metav1.PartialObjectMetadata{}
		obj.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind(kind))
		informer, err := c.GetInformer(ctx, obj)
		if err != nil {
			tb.Fatalf("watching %ss: %v", kind, err)
		}
		if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) {
				if m, ok := o.(metav1.Object); ok {
					w.saw(workloadKey(kind, m.GetName()))
				}
			},
		}); err != nil {
			tb.Fatal(err)
		}
	}
	syncCtx, syncCancel := context.WithTimeout(ctx, time.Minute)
	defer syncCancel()
	if !c.WaitForCacheSync(syncCtx) {
		tb.Fatal("the workload watch did not sync")
	}
	return w
}

func (w *workloadWatch) saw(key string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.seen[key]; !ok {
		w.seen[key] = now
	}
}

// waitFor waits until every workload of keys has been seen, and returns
// when the last of them was; it fails tb (with the operator's log) after
// timeout.
func (w *workloadWatch) waitFor(tb testing.TB, op *operatorProcess, keys []string, timeout time.Duration) time.Time {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var last time.Time
		missing := 0
		w.mu.Lock()
		for _, k := range keys {
			at, ok := w.seen[k]
			switch {
			case !ok:
				missing++
			case at.After(last):
				last = at
			}
		}
		w.mu.Unlock()
		if missing == 0 {
			return last
		}
		if time.Now().After(deadline) {
			op.fatalf(tb, "%d of %d workloads still missing after %s", missing, len(keys), timeout)
		}
		op.checkRunning(tb)
		time.Sleep(50 * time.Millisecond)
	}
}

// createKezChats creates KezChats chat-<from> to chat-<to-1> in namespace,
// each with spec.domain chat-NNNN.example.org and every other field
// defaulted, by workers creators at once, and returns the keys of the
// workloads (workloadKey) the operator is to make for them: the
// Deployments and StatefulSets of desiredObjects.
func createKezChats(tb testing.TB, c client.Client, namespace string, from, to, workers int) []string {
	tb.Helper()
	var (
		mu       sync.Mutex
		keys     []string
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range next {
				kc := &chatv1.KezChat{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("chat-%04d", i), Namespace: namespace},
					Spec:       chatv1.KezChatSpec{Domain: fmt.Sprintf("chat-%04d.example.org", i)},
				}
				err := c.Create(context.Background(), kc)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("creating KezChat %s: %w", kc.Name, err)
				}
				if err == nil {
					// kc is as created, with the API server's defaults.
					for _, obj := range desiredObjects(kc, Inputs{}) {
						switch obj.(type) {
						case *appsv1.Deployment:
							keys = append(keys, workloadKey("Deployment", obj.GetName()))
						case *appsv1.StatefulSet:
							keys = append(keys, workloadKey("StatefulSet", obj.GetName()))
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	for i := from; i < to; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
	return keys
}
