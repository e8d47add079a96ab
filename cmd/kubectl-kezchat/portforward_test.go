package main

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The choice of pod and port and the URL are pure functions tested on
// their own, the selection against the API server; a forward to a pod on
// no node fails cleanly here, and kubelet_test.go carries one through the
// API server to a stand-in kubelet.

func pod(name string, phase corev1.PodPhase, ready bool, created time.Time) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(created)}}
	p.Status.Phase = phase
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
	return p
}

func TestPickPod(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	terminating := pod("old", corev1.PodRunning, true, t0.Add(-time.Hour))
	terminating.DeletionTimestamp = &metav1.Time{Time: t0}
	cases := []struct {
		name    string
		pods    []corev1.Pod
		want    string
		wantErr string
	}{
		{"the oldest ready pod", []corev1.Pod{
			pod("b", corev1.PodRunning, true, t0.Add(time.Minute)), pod("a", corev1.PodRunning, true, t0), pod("c", corev1.PodRunning, true, t0.Add(time.Hour)),
		}, "a", ""},
		{"by name among equals", []corev1.Pod{pod("z", corev1.PodRunning, true, t0), pod("y", corev1.PodRunning, true, t0)}, "y", ""},
		{"not a terminating, unready or pending one", []corev1.Pod{
			terminating, pod("unready", corev1.PodRunning, false, t0), pod("pending", corev1.PodPending, false, t0), pod("ok", corev1.PodRunning, true, t0.Add(time.Hour)),
		}, "ok", ""},
		{"none ready says why", []corev1.Pod{terminating, pod("unready", corev1.PodRunning, false, t0), pod("pending", corev1.PodPending, false, t0)}, "",
			"no ready chat server pod: old is terminating; unready is not ready; pending is Pending"},
		{"no pods", nil, "", "no chat server pods"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := pickPod(c.pods)
			if c.wantErr != "" {
				if err == nil || err.Error() != c.wantErr {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got.Name != c.want {
				t.Fatalf("picked %v (%v), want %s", got, err, c.want)
			}
		})
	}
}

func TestPodPort(t *testing.T) {
	p := serverPod("ns", "team", "team-server-x", "n")
	svc := serverService("ns", "team")
	numeric := svc.DeepCopy()
	numeric.Spec.Ports[0].TargetPort = intstr.FromInt32(7000)
	unset := svc.DeepCopy()
	unset.Spec.Ports[0].TargetPort = intstr.IntOrString{}
	renamed := svc.DeepCopy()
	renamed.Spec.Ports[0].TargetPort = intstr.FromString("web")
	noHTTP := svc.DeepCopy()
	noHTTP.Spec.Ports = noHTTP.Spec.Ports[1:]
	cases := []struct {
		name    string
		svc     *corev1.Service
		want    int32
		wantErr string
	}{
		{"the named container port", svc, 6969, ""},
		{"a numeric target port", numeric, 7000, ""},
		{"an unset target port is the port", unset, 6969, ""},
		{"without the Service, the container port named http", nil, 6969, ""},
		{"a target the pod lacks", renamed, 0, `pod team-server-x has no container port named "web"`},
		{"a Service without the port", noHTTP, 0, `service team-server has no port "http"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := podPort(c.svc, p, "http")
			if c.wantErr != "" {
				if err == nil || err.Error() != c.wantErr {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("port %d (%v), want %d", got, err, c.want)
			}
		})
	}
}

func TestLocalURL(t *testing.T) {
	for _, c := range []struct {
		address string
		port    uint16
		want    string
	}{
		{"127.0.0.1", 6969, "http://127.0.0.1:6969/"},
		{"localhost", 8080, "http://localhost:8080/"},
		{"::1", 6969, "http://[::1]:6969/"},
		{"0.0.0.0", 6969, "http://localhost:6969/"},
		{"::", 6969, "http://localhost:6969/"},
		{"192.0.2.7", 1, "http://192.0.2.7:1/"},
	} {
		if got := localURL(c.address, c.port); got != c.want {
			t.Errorf("localURL(%q, %d) = %q, want %q", c.address, c.port, got, c.want)
		}
	}
}

func TestForwardTargetIsAReadyServerPodOfThatKezChat(t *testing.T) {
	ctx := context.Background()
	ns := testNamespace(t)
	mustCreate(t, newKezChat(ns, "team"), newKezChat(ns, "other"), serverService(ns, "team"))
	unready := serverPod(ns, "team", "team-server-unready", "node-a")
	ready := serverPod(ns, "team", "team-server-ready", "node-a")
	others := serverPod(ns, "other", "other-server", "node-a")
	mustCreate(t, unready, ready, others)
	setRunning(t, unready, false)
	setRunning(t, ready, true)
	setRunning(t, others, true)

	k := testKube(t, ns)
	got, err := forwardTarget(ctx, k, "team")
	if err != nil {
		t.Fatal(err)
	}
	if got != (target{pod: "team-server-ready", port: 6969}) {
		t.Errorf("target = %+v", got)
	}

	// The API server takes the forward, and fails it: no node runs the
	// pod. The command says so and ends; it does not hang.
	code, out, stderr := runWithTimeout(t, 30*time.Second, "port-forward", "team", "0", "-n", ns)
	if code != 1 || !strings.Contains(stderr, "forwarding to pod team-server-ready") || strings.Contains(out, "Open http") {
		t.Errorf("port-forward without a kubelet: exit %d, stdout %q, stderr %q", code, out, stderr)
	}

	code, _, stderr = runPlugin(t, "port-forward", "team", "70000", "-n", ns)
	if code != 2 || !strings.Contains(stderr, `local port "70000"`) {
		t.Errorf("port 70000: exit %d, %q", code, stderr)
	}
	code, _, stderr = runPlugin(t, "port-forward", "nobody", "-n", ns)
	if code != 1 || !strings.Contains(stderr, `no such KezChat "nobody"`) {
		t.Errorf("missing KezChat: exit %d, %q", code, stderr)
	}
}

func runWithTimeout(t *testing.T, d time.Duration, args ...string) (int, string, string) {
	t.Helper()
	type result struct {
		code        int
		out, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, out, stderr := runPlugin(t, args...)
		done <- result{code, out, stderr}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.stderr
	case <-time.After(d):
		t.Fatalf("%v did not end within %v", args, d)
		return 0, "", ""
	}
}
