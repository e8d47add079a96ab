package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers/testenv"
	"kez.lat/chat/server/testutil"
)

// BenchmarkOperatorBinary measures the operator as it ships: the built
// `kezchat operator` ($KEZCHAT_BIN, default ../bin/kezchat), run as a
// process of its own with default flags from a kubeconfig, against a
// kube-apiserver and etcd of its own for each size ($KEZ_BENCH_KEZCHATS,
// default "200,1000"), with the Service range widened to a /16. For each
// size it reports:
//
//   - s-to-workloads, kezchats/s: from the first of N KezChats created
//     (32 at a time, while the operator runs) until a watch has seen every
//     Deployment and StatefulSet of every one of them;
//   - create-requests/kezchat: the operator's API requests
//     (rest_client_requests_total) once quiet, per KezChat;
//   - restart-requests/kezchat: the same for a restarted operator (SIGTERM,
//     then the same command) once it has reconciled the N steady KezChats
//     and is quiet, with its requests by method in the log;
//   - s-new-after-restart: N/10 more KezChats created after the restart, to
//     all workloads;
//   - s-max-repair: the longest of five hand edits (four Deployments'
//     environment, one Service's targetPort) until the watch sees it put back;
//   - MB-peak-rss, MB-peak-rss-restarted: the peak RSS (VmHWM) of the
//     first operator process and of the restarted one.
//
// The log adds the time until the operator was quiet after each phase,
// which includes the 3 s of unmoving request counts that tell it.
//
//	make bench-operator
//	KEZCHAT_BIN=$PWD/bin/kezchat KEZ_BENCH_KEZCHATS=50 go test -run '^$' -bench OperatorBinary -benchtime 1x -timeout 60m ./controllers/
func BenchmarkOperatorBinary(b *testing.B) {
	bin := os.Getenv("KEZCHAT_BIN")
	if bin == "" {
		bin = filepath.Join("..", "bin", "kezchat")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		b.Fatal(err)
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		b.Fatalf("no kezchat binary at %s ($KEZCHAT_BIN): build it with `make build`, or run `make bench-operator`, which does", bin)
	}
	sizes := os.Getenv("KEZ_BENCH_KEZCHATS")
	if sizes == "" {
		sizes = "200,1000"
	}
	for field := range strings.SplitSeq(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			b.Fatalf("KEZ_BENCH_KEZCHATS=%q: want comma-separated counts of KezChats", sizes)
		}
		b.Run(fmt.Sprintf("kezchats=%d", n), func(b *testing.B) {
			for range b.N {
				benchOperatorBinary(b, bin, n)
			}
		})
	}
}

// benchOperatorBinary is one run of BenchmarkOperatorBinary with n
// KezChats. The benchmark's timer runs from the first create until every
// KezChat has its workloads.
func benchOperatorBinary(b *testing.B, bin string, n int) {
	b.StopTimer()
	const (
		creators  = 32
		namespace = "bench"
	)
	// Generous: today's operator takes about 0.2 s per KezChat.
	timeout := 5*time.Minute + time.Duration(n)*500*time.Millisecond
	ctx := context.Background()

	// A control plane of its own, with room for n KezChats' ~3 Services
	// each (envtest's /24 runs out of ClusterIPs at about 80).
	env, cfg, err := testenv.Start(testenv.APIServerFlag("service-cluster-ip-range", "10.96.0.0/16"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { env.Stop() })
	dir := b.TempDir()
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(env, "kezchat-operator", kubeconfigPath); err != nil {
		b.Fatal(err)
	}

	// The bench's own clients, which the API server answers without delay
	// (system:masters is exempt from its priority and fairness).
	benchCfg := rest.CopyConfig(cfg)
	benchCfg.QPS, benchCfg.Burst = 1000, 2000
	c, err := client.New(benchCfg, client.Options{Scheme: testScheme})
	if err != nil {
		b.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(benchCfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		b.Fatal(err)
	}
	workloads := watchWorkloads(b, benchCfg, namespace)

	metrics, probes := testutil.FreeAddr(b), testutil.FreeAddr(b)
	op := startOperator(b, bin, kubeconfigPath, metrics, probes, filepath.Join(dir, "operator-1.log"))
	op.waitReady(b, 2*time.Minute)

	// N KezChats created while the operator runs.
	b.StartTimer()
	start := time.Now()
	keys := createKezChats(b, c, namespace, 0, n, creators)
	created := time.Since(start)
	last := workloads.waitFor(b, op, keys, timeout)
	b.StopTimer()
	toWorkloads := last.Sub(start)
	createQuiet := op.waitQuiet(b, n, timeout)
	createToQuiet := time.Since(start)
	createRequests := createQuiet.sum(restRequestsMetric, nil)
	rss := op.peakRSS(b)

	// A restart with n steady KezChats.
	stopErr := op.stop(b)
	restartAt := time.Now()
	op = startOperator(b, bin, kubeconfigPath, metrics, probes, filepath.Join(dir, "operator-2.log"))
	op.waitReady(b, 2*time.Minute)
	restartQuiet := op.waitQuiet(b, n, timeout)
	restartToQuiet := time.Since(restartAt)
	restartRequests := restartQuiet.sum(restRequestsMetric, nil)
	restartByMethod := restartQuiet.by(restRequestsMetric, "method")

	// N/10 more, created after the restart.
	more := max(1, n/10)
	start = time.Now()
	keys = createKezChats(b, c, namespace, n, n+more, creators)
	newAfterRestart := workloads.waitFor(b, op, keys, timeout).Sub(start)
	op.waitQuiet(b, n+more, timeout)
	newToQuiet := time.Since(start)

	// Hand edits of five KezChats spread over the first n, one at a time.
	var repairs []time.Duration
	for k := range 5 {
		name := namesOf(&chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("chat-%04d", (2*k+1)*n/10)}}).server()
		var took time.Duration
		if k == 2 {
			took = repairServiceTargetPort(b, op, cs, namespace, name)
		} else {
			took = repairDeploymentEnv(b, op, cs, namespace, name)
		}
		repairs = append(repairs, took)
	}
	maxRepair := repairs[0]
	for _, d := range repairs {
		maxRepair = max(maxRepair, d)
	}
	rssRestarted := op.peakRSS(b)

	const mb = 1e6
	b.ReportMetric(toWorkloads.Seconds(), "s-to-workloads")
	b.ReportMetric(float64(n)/toWorkloads.Seconds(), "kezchats/s")
	b.ReportMetric(createRequests/float64(n), "create-requests/kezchat")
	b.ReportMetric(restartRequests/float64(n), "restart-requests/kezchat")
	b.ReportMetric(newAfterRestart.Seconds(), "s-new-after-restart")
	b.ReportMetric(maxRepair.Seconds(), "s-max-repair")
	b.ReportMetric(rss/mb, "MB-peak-rss")
	b.ReportMetric(rssRestarted/mb, "MB-peak-rss-restarted")
	b.Logf("%d KezChats (created in %.1f s) to all workloads in %.1f s (%.1f KezChats/s), operator quiet after %.1f s with %.1f requests/KezChat (%s), peak RSS %.0f MB",
		n, created.Seconds(), toWorkloads.Seconds(), float64(n)/toWorkloads.Seconds(),
		createToQuiet.Seconds(), createRequests/float64(n), formatCounts(createQuiet.by(restRequestsMetric, "method")), rss/mb)
	b.Logf("%d KezChats: restart (SIGTERM: exit %v) quiet after %.1f s with %.0f requests, %.2f/KezChat (%s); %d new after the restart to all workloads in %.1f s (quiet after %.1f s); hand edits put back in %s (max %.2f s); restarted peak RSS %.0f MB",
		n, exitStatus(stopErr), restartToQuiet.Seconds(), restartRequests, restartRequests/float64(n), formatCounts(restartByMethod),
		more, newAfterRestart.Seconds(), newToQuiet.Seconds(), formatDurations(repairs), maxRepair.Seconds(), rssRestarted/mb)
	if err := op.stop(b); err != nil {
		b.Logf("the restarted operator's exit on SIGTERM: %v", err)
	}
}

// handEditor is the field manager of the bench's hand edits.
const handEditor = "kezchat-bench-hand-edit"

// repairDeploymentEnv sets the value of the first container's first
// environment variable in Deployment name to one of its own, as someone
// might by hand, and returns how long until a watch sees the operator put
// it back.
//
// Not the image, the likeliest field to edit by hand: in envtest no pod
// ever runs, so no KezChat's status records the image it rolled out, and
// the operator takes a hand-edited image for the one running: putting its
// own back is then an upgrade, paced one KezChat at a time
// (--max-concurrent-upgrades), which the first edited KezChat holds for
// good, as its new pods never turn Ready.
func repairDeploymentEnv(tb testing.TB, op *operatorProcess, cs kubernetes.Interface, namespace, name string) time.Duration {
	tb.Helper()
	const handValue = "hand-edited"
	ctx := context.Background()
	deployments := cs.AppsV1().Deployments(namespace)
	d, err := deployments.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if len(c.Env) == 0 || c.Env[0].ValueFrom != nil {
		tb.Fatalf("Deployment %s: container %s has no plain environment variable first to edit", name, c.Name)
	}
	container, variable, value := c.Name, c.Env[0].Name, c.Env[0].Value
	valueOf := func(d *appsv1.Deployment) string {
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name == container {
				for _, e := range c.Env {
					if e.Name == variable {
						return e.Value
					}
				}
			}
		}
		return ""
	}
	// Containers merge by name, and their env by name.
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":%q,"env":[{"name":%q,"value":%q}]}]}}}}`,
		container, variable, handValue)
	start := time.Now()
	edited, err := deployments.Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: handEditor})
	if err != nil {
		tb.Fatalf("editing Deployment %s: %v", name, err)
	}
	if got := valueOf(edited); got != handValue {
		tb.Fatalf("Deployment %s edited by hand has %s=%q, want %q", name, variable, got, handValue)
	}
	w, err := deployments.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: edited.ResourceVersion})
	if err != nil {
		tb.Fatal(err)
	}
	return waitRepaired(tb, op, w, start, "Deployment "+name+"'s "+variable, func(obj runtime.Object) bool {
		d, ok := obj.(*appsv1.Deployment)
		return ok && valueOf(d) == value
	})
}

// repairServiceTargetPort points the server port of Service name at
// another target port, as someone might by hand, and returns how long
// until a watch sees the operator put it back.
func repairServiceTargetPort(tb testing.TB, op *operatorProcess, cs kubernetes.Interface, namespace, name string) time.Duration {
	tb.Helper()
	ctx := context.Background()
	services := cs.CoreV1().Services(namespace)
	s, err := services.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	targetOf := func(s *corev1.Service) (intstr.IntOrString, bool) {
		for _, p := range s.Spec.Ports {
			if p.Port == serverPort {
				return p.TargetPort, true
			}
		}
		return intstr.IntOrString{}, false
	}
	target, ok := targetOf(s)
	if !ok {
		tb.Fatalf("Service %s has no port %d", name, serverPort)
	}
	hand := intstr.FromInt32(7777)
	// Service ports merge by port: this changes that one's targetPort.
	patch := fmt.Sprintf(`{"spec":{"ports":[{"port":%d,"targetPort":%d}]}}`, serverPort, hand.IntVal)
	start := time.Now()
	edited, err := services.Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: handEditor})
	if err != nil {
		tb.Fatalf("editing Service %s: %v", name, err)
	}
	if got, _ := targetOf(edited); got != hand {
		tb.Fatalf("Service %s edited by hand has targetPort %s, want %s", name, got.String(), hand.String())
	}
	w, err := services.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: edited.ResourceVersion})
	if err != nil {
		tb.Fatal(err)
	}
	return waitRepaired(tb, op, w, start, "Service "+name+"'s targetPort", func(obj runtime.Object) bool {
		s, ok := obj.(*corev1.Service)
		if !ok {
			return false
		}
		got, _ := targetOf(s)
		return got == target
	})
}

// waitRepaired reads w until restored holds for an object it sends, and
// returns the time since start; it fails tb after 30 s.
func waitRepaired(tb testing.TB, op *operatorProcess, w watch.Interface, start time.Time, what string, restored func(runtime.Object) bool) time.Duration {
	tb.Helper()
	defer w.Stop()
	const timeout = 30 * time.Second
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				op.fatalf(tb, "the watch of %s ended", what)
			}
			if ev.Type == watch.Error {
				op.fatalf(tb, "watching %s: %v", what, ev.Object)
			}
			if restored(ev.Object) {
				return time.Since(start)
			}
		case <-deadline:
			op.fatalf(tb, "%s edited by hand was not put back within %s", what, timeout)
		}
	}
}

// exitStatus says how a process ended, from exec's error.
func exitStatus(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

// formatDurations is ds in seconds, as "0.12 s, 0.30 s".
func formatDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.2f s", d.Seconds())
	}
	return strings.Join(parts, ", ")
}
