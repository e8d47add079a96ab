package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// serverHTTPPort is the chat server Service's port that serves the web
// app and the API (controllers/server.go: "http", 6969).
const serverHTTPPort = "http"

func runPortForward(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, conn := newFlagSet("port-forward", "NAME [LOCAL_PORT]", stderr)
	address := fs.String("address", "127.0.0.1", "local address to listen on")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return usagef("port-forward takes a KezChat name and, optionally, a local port")
	}
	local := uint16(6969)
	if fs.NArg() == 2 {
		p, err := strconv.ParseUint(fs.Arg(1), 10, 16)
		if err != nil {
			return usagef("local port %q: a number from 0 (any free port) to 65535", fs.Arg(1))
		}
		local = uint16(p)
	}
	if net.ParseIP(*address) == nil && *address != "localhost" {
		return usagef("--address %q: an IP address or localhost", *address)
	}
	k, err := conn.connect()
	if err != nil {
		return err
	}
	name := fs.Arg(0)
	if _, err := getKezChat(ctx, k, name); err != nil {
		return err
	}
	target, err := forwardTarget(ctx, k, name)
	if err != nil {
		return err
	}
	return forward(ctx, k, target, *address, local, stdout, stderr)
}

// target is the pod and container port a port-forward reaches.
type target struct {
	pod  string
	port int32
}

// forwardTarget is a ready chat server pod of the KezChat name and the
// port its Service's "http" port goes to.
func forwardTarget(ctx context.Context, k *kube, name string) (target, error) {
	pods, err := componentPods(ctx, k, name, componentServer)
	if err != nil {
		return target{}, err
	}
	pod, err := pickPod(pods)
	if err != nil {
		return target{}, fmt.Errorf("KezChat %s/%s: %w", k.namespace, name, err)
	}
	var svcs corev1.ServiceList
	sel := instanceSelector(name)
	sel[labelComponent] = componentServer
	if err := k.client.List(ctx, &svcs, client.InNamespace(k.namespace), sel); err != nil {
		return target{}, fmt.Errorf("listing services: %w", err)
	}
	var svc *corev1.Service
	if len(svcs.Items) > 0 {
		svc = &svcs.Items[0]
	}
	port, err := podPort(svc, pod, serverHTTPPort)
	if err != nil {
		return target{}, err
	}
	return target{pod: pod.Name, port: port}, nil
}

// pickPod is the pod to forward to: a running, ready one that is not
// being deleted, the oldest (the least likely to go in a rollout), by
// name among equals. The error says why none will do.
func pickPod(pods []corev1.Pod) (*corev1.Pod, error) {
	var ready []*corev1.Pod
	var why []string
	for i := range pods {
		p := &pods[i]
		switch {
		case p.DeletionTimestamp != nil:
			why = append(why, p.Name+" is terminating")
		case p.Status.Phase != corev1.PodRunning:
			why = append(why, fmt.Sprintf("%s is %s", p.Name, orDash(string(p.Status.Phase))))
		case !podReady(p):
			why = append(why, p.Name+" is not ready")
		default:
			ready = append(ready, p)
		}
	}
	if len(ready) == 0 {
		if len(why) == 0 {
			return nil, errors.New("no chat server pods")
		}
		return nil, fmt.Errorf("no ready chat server pod: %s", strings.Join(why, "; "))
	}
	sort.Slice(ready, func(i, j int) bool {
		a, b := ready[i].CreationTimestamp, ready[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return ready[i].Name < ready[j].Name
	})
	return ready[0], nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podPort is the container port of pod that the Service port named
// portName targets, by number or by the container port's name; without
// the Service, the container port called portName.
func podPort(svc *corev1.Service, pod *corev1.Pod, portName string) (int32, error) {
	want := intstr.FromString(portName)
	if svc != nil {
		found := false
		for _, sp := range svc.Spec.Ports {
			if sp.Name == portName {
				want, found = sp.TargetPort, true
				if want.Type == intstr.Int && want.IntVal == 0 {
					want = intstr.FromInt32(sp.Port) // an unset targetPort is the port
				}
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("service %s has no port %q", svc.Name, portName)
		}
	}
	if want.Type == intstr.Int {
		return want.IntVal, nil
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == want.StrVal {
				return cp.ContainerPort, nil
			}
		}
	}
	return 0, fmt.Errorf("pod %s has no container port named %q", pod.Name, want.StrVal)
}

// localURL is the address people open once the forward listens.
func localURL(address string, port uint16) string {
	host := address
	if ip := net.ParseIP(address); ip != nil && ip.IsUnspecified() {
		host = "localhost" // listening on every address: this machine's own name works
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(int(port))) + "/"
}

// forward runs the port-forward until ctx ends, as kubectl port-forward
// does: WebSocket first, SPDY for an API server that does not upgrade.
func forward(ctx context.Context, k *kube, t target, address string, local uint16, stdout, stderr io.Writer) error {
	req := k.core.CoreV1().RESTClient().Post().Resource("pods").Namespace(k.namespace).Name(t.pod).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(k.config)
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	if ws, err := portforward.NewSPDYOverWebsocketDialer(req.URL(), k.config); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	ready := make(chan struct{})
	fw, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{address},
		[]string{fmt.Sprintf("%d:%d", local, t.port)}, ready, io.Discard, stderr)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case err := <-done:
		return fmt.Errorf("forwarding to pod %s: %w", t.pod, err)
	case <-ready:
	}
	ports, err := fw.GetPorts()
	if err == nil && len(ports) > 0 {
		local = ports[0].Local
	}
	fmt.Fprintf(stdout, "Forwarding %s to pod %s port %d. Open %s (Ctrl-C stops).\n",
		net.JoinHostPort(address, strconv.Itoa(int(local))), t.pod, t.port, localURL(address, local))
	if err := <-done; err != nil && ctx.Err() == nil {
		return fmt.Errorf("forwarding to pod %s: %w", t.pod, err)
	}
	return nil
}
