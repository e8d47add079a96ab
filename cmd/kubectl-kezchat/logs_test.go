package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Here the pods are chosen by the API server and their logs come from a
// stand-in logSource that records what was asked of it; kubelet_test.go
// reads logs through the API server from a stand-in kubelet.

type fakeLogs struct {
	lines map[string][]string // by pod
	mu    sync.Mutex          // --follow opens the pods' logs at once
	asked []*corev1.PodLogOptions
}

func (f *fakeLogs) open(_ context.Context, pod *corev1.Pod, opts *corev1.PodLogOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, opts)
	lines, ok := f.lines[pod.Name]
	if !ok {
		return nil, fmt.Errorf("no log")
	}
	return io.NopCloser(strings.NewReader(strings.Join(lines, "\n") + "\n")), nil
}

func TestLogsOfOneComponentOfOneKezChat(t *testing.T) {
	ctx := context.Background()
	ns := testNamespace(t)
	mustCreate(t, newKezChat(ns, "team"), newKezChat(ns, "other"))
	mustCreate(t,
		serverPod(ns, "team", "team-server-b", "node-a"),
		serverPod(ns, "team", "team-server-a", "node-a"),
		serverPod(ns, "other", "other-server", "node-a"),
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team-nats-0", Labels: operatorLabels("team", componentNATS)},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nats", Image: "nats"}}},
		},
	)
	k := testKube(t, ns)
	pods, err := componentPods(ctx, k, "team", componentServer)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "team-server-a,team-server-b" {
		t.Fatalf("server pods of team = %v", names)
	}

	cases := []struct {
		name string
		pods []corev1.Pod
		opts logOptions
		want []string
	}{
		{"one pod: lines as they are", pods[:1], logOptions{tail: -1},
			[]string{"a1", "a2"}},
		{"several: each line says its pod", pods, logOptions{tail: 10},
			[]string{"[pod/team-server-a] a1", "[pod/team-server-a] a2", "[pod/team-server-b] b1"}},
		{"several, followed: interleaved whole lines", pods, logOptions{tail: -1, follow: true},
			[]string{"[pod/team-server-a] a1", "[pod/team-server-a] a2", "[pod/team-server-b] b1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeLogs{lines: map[string][]string{"team-server-a": {"a1", "a2"}, "team-server-b": {"b1"}}}
			var out bytes.Buffer
			if err := streamLogs(ctx, c.pods, c.opts, &out, f.open); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if c.opts.follow {
				sort.Strings(got) // the order across pods is the streams'
			}
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Errorf("got %q, want %q", got, c.want)
			}
			for _, o := range f.asked {
				if o.Container != "server" || o.Follow != c.opts.follow || (c.opts.tail >= 0) != (o.TailLines != nil) {
					t.Errorf("asked %+v for %+v", o, c.opts)
				}
			}
		})
	}

	f := &fakeLogs{lines: map[string][]string{}}
	err = streamLogs(ctx, pods[:1], logOptions{tail: -1, container: "sidecar", since: 5 * time.Minute}, io.Discard, f.open)
	if err == nil || !strings.Contains(err.Error(), "log of pod team-server-a") {
		t.Errorf("a log that cannot be read: %v", err)
	}
	if o := f.asked[0]; o.Container != "sidecar" || o.SinceSeconds == nil || *o.SinceSeconds != 300 {
		t.Errorf("asked %+v", o)
	}
}

func TestLogsCommandRefusesWhatItCannotShow(t *testing.T) {
	ns := testNamespace(t)
	mustCreate(t, newKezChat(ns, "team"))
	mustCreate(t, serverPod(ns, "team", "team-server-a", "node-a"))
	cases := []struct {
		name     string
		args     []string
		code     int
		inStderr string
	}{
		{"an unknown component", []string{"logs", "team", "web", "-n", ns}, 2, `unknown component "web": one of server, sig-server, nats`},
		{"no component", []string{"logs", "team", "-n", ns}, 2, "logs takes a KezChat name and a component"},
		{"no such KezChat", []string{"logs", "nope", "server", "-n", ns}, 1, `no such KezChat "nope"`},
		{"a component without pods", []string{"logs", "team", "nats", "-n", ns}, 1, "has no nats pods"},
		// The API server finds no node to ask for the log: the error is
		// the API server's, and the command ends.
		{"no kubelet", []string{"logs", "team", "server", "-n", ns}, 1, "log of pod team-server-a"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runPlugin(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.inStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, c.code, c.inStderr)
			}
		})
	}
}

// blockingLog is a followed log that has nothing more to say: it ends
// only when its request is cancelled.
type blockingLog struct{ ctx context.Context }

func (b blockingLog) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func (b blockingLog) Close() error { return nil }

func TestFollowingEndsWhenOnePodsLogFails(t *testing.T) {
	pods := []corev1.Pod{
		*serverPod("ns", "team", "team-server-a", "n"),
		*serverPod("ns", "team", "team-server-b", "n"),
	}
	open := func(ctx context.Context, pod *corev1.Pod, _ *corev1.PodLogOptions) (io.ReadCloser, error) {
		if pod.Name == "team-server-a" {
			return nil, fmt.Errorf("container restarting")
		}
		return blockingLog{ctx}, nil
	}
	done := make(chan error, 1)
	go func() {
		done <- streamLogs(context.Background(), pods, logOptions{tail: -1, follow: true}, io.Discard, open)
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "log of pod team-server-a: container restarting") {
			t.Errorf("err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("following went on without the pod whose log failed")
	}
}
