package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

type logOptions struct {
	container  string
	follow     bool
	tail       int64
	since      time.Duration
	previous   bool
	timestamps bool
}

func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, conn := newFlagSet("logs", "NAME server|sig-server|nats", stderr)
	var o logOptions
	fs.StringVarP(&o.container, "container", "c", "", "container of the pods (default: the component's own, the first)")
	fs.BoolVarP(&o.follow, "follow", "f", false, "keep streaming new lines")
	fs.Int64Var(&o.tail, "tail", -1, "lines from the end of each log; -1 for all")
	fs.DurationVar(&o.since, "since", 0, "only lines newer than this (5m, 1h)")
	fs.BoolVarP(&o.previous, "previous", "p", false, "the log of each container's previous run")
	fs.BoolVar(&o.timestamps, "timestamps", false, "prefix each line with its time")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("logs takes a KezChat name and a component (server, sig-server or nats)")
	}
	name, component := fs.Arg(0), fs.Arg(1)
	if err := validComponent(component); err != nil {
		return err
	}
	k, err := conn.connect()
	if err != nil {
		return err
	}
	if _, err := getKezChat(ctx, k, name); err != nil {
		return err
	}
	pods, err := componentPods(ctx, k, name, component)
	if err != nil {
		return err
	}
	return streamLogs(ctx, pods, o, stdout, func(ctx context.Context, pod *corev1.Pod, opts *corev1.PodLogOptions) (io.ReadCloser, error) {
		return k.core.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, opts).Stream(ctx)
	})
}

// componentPods are one component's pods of the KezChat name, by name;
// an error when there are none.
func componentPods(ctx context.Context, k *kube, name, component string) ([]corev1.Pod, error) {
	sel := instanceSelector(name)
	sel[labelComponent] = component
	var pods corev1.PodList
	if err := k.client.List(ctx, &pods, client.InNamespace(k.namespace), sel); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("KezChat %s/%s has no %s pods (is the component enabled and scaled above 0?)", k.namespace, name, component)
	}
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	return pods.Items, nil
}

// logSource opens one container's log: the pods/log API, or a stand-in
// in tests (envtest has no kubelet to serve logs).
type logSource func(ctx context.Context, pod *corev1.Pod, opts *corev1.PodLogOptions) (io.ReadCloser, error)

// streamLogs copies the logs of pods to w. One pod's lines go as they
// are; with several, each line is prefixed with [pod/NAME], and with
// --follow they are read at once and interleaved line by line.
func streamLogs(ctx context.Context, pods []corev1.Pod, o logOptions, w io.Writer, open logSource) error {
	opts := func(pod *corev1.Pod) *corev1.PodLogOptions {
		po := &corev1.PodLogOptions{
			Container: o.container, Follow: o.follow, Previous: o.previous, Timestamps: o.timestamps,
		}
		if po.Container == "" && len(pod.Spec.Containers) > 0 {
			po.Container = pod.Spec.Containers[0].Name
		}
		if o.tail >= 0 {
			po.TailLines = &o.tail
		}
		if o.since > 0 {
			s := int64(o.since.Seconds())
			po.SinceSeconds = &s
		}
		return po
	}
	prefix := len(pods) > 1
	var mu sync.Mutex
	copyPod := func(pod *corev1.Pod) error {
		r, err := open(ctx, pod, opts(pod))
		if err != nil {
			return fmt.Errorf("log of pod %s: %w", pod.Name, err)
		}
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			mu.Lock()
			if prefix {
				fmt.Fprintf(w, "[pod/%s] ", pod.Name)
			}
			_, err := fmt.Fprintf(w, "%s\n", sc.Bytes())
			mu.Unlock()
			if err != nil {
				return err
			}
		}
		if err := sc.Err(); err != nil && ctx.Err() == nil {
			return fmt.Errorf("log of pod %s: %w", pod.Name, err)
		}
		return nil
	}
	if !o.follow {
		for i := range pods {
			if err := copyPod(&pods[i]); err != nil {
				return err
			}
		}
		return nil
	}
	// One stream failing ends the others: a follow that silently lost a
	// pod would look like a quiet pod.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(pods))
	for i := range pods {
		go func() { errs <- copyPod(&pods[i]) }()
	}
	var first error
	for range pods {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}
