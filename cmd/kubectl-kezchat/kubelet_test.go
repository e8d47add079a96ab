package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"
)

// fakeKubelet stands in for the kubelet of one node, on loopback, for
// what the API server asks a kubelet when a client asks it for pods/log
// and pods/portforward: a container's log, and a port-forward, which it
// takes to forwardTo whatever pod port is asked (recorded in ports).
// The API server, the client and the wire between them are real. (The
// kubelet's stats summary, which status reads through nodes/proxy, cannot
// be served so: the API server proxies nodes/proxy to no loopback
// address.)
type fakeKubelet struct {
	srv       *httptest.Server
	logs      map[string]string // by namespace/pod/container
	forwardTo string

	mu    sync.Mutex
	ports []string
}

func startFakeKubelet(t *testing.T, forwardTo string, logs map[string]string) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{logs: logs, forwardTo: forwardTo}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", func(w http.ResponseWriter, r *http.Request) {
		log, ok := k.logs[r.PathValue("ns")+"/"+r.PathValue("pod")+"/"+r.PathValue("container")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, log)
	})
	mux.HandleFunc("/portForward/{ns}/{pod}", k.portForward)
	k.srv = httptest.NewTLSServer(mux)
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKubelet) port() int32 {
	_, p, _ := net.SplitHostPort(k.srv.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// portForward speaks the kubelet's side of portforward.k8s.io: each
// forwarded connection is an error stream and a data stream of one
// requestID; the data goes to forwardTo, and both streams close when it
// is done.
func (k *fakeKubelet) portForward(w http.ResponseWriter, r *http.Request) {
	if _, err := httpstream.Handshake(r, w, []string{"portforward.k8s.io"}); err != nil {
		return
	}
	streams := make(chan httpstream.Stream, 16)
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, r, func(s httpstream.Stream, _ <-chan struct{}) error {
		streams <- s
		return nil
	})
	if conn == nil {
		return
	}
	defer conn.Close()
	errorStreams := map[string]httpstream.Stream{}
	for {
		select {
		case <-conn.CloseChan():
			return
		case s := <-streams:
			id := s.Headers().Get(corev1.PortForwardRequestIDHeader)
			if s.Headers().Get(corev1.StreamType) == corev1.StreamTypeError {
				errorStreams[id] = s
				continue
			}
			k.mu.Lock()
			k.ports = append(k.ports, s.Headers().Get(corev1.PortHeader))
			k.mu.Unlock()
			go forwardStream(s, errorStreams[id], k.forwardTo)
		}
	}
}

func forwardStream(data, errStream httpstream.Stream, to string) {
	defer func() {
		if errStream != nil {
			errStream.Close()
		}
	}()
	target, err := net.Dial("tcp", to)
	if err != nil {
		if errStream != nil {
			fmt.Fprintf(errStream, "dialing %s: %v", to, err)
		}
		data.Reset()
		return
	}
	defer target.Close()
	go func() {
		io.Copy(target, data)
		target.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(data, target)
	data.Close()
}

// onFakeKubelet makes a Node whose kubelet is k, as the API server finds
// kubelets: the node's InternalIP and its kubelet endpoint's port.
func onFakeKubelet(t *testing.T, k *fakeKubelet) string {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "fake-kubelet-"}}
	mustCreate(t, node)
	t.Cleanup(func() { k8s.Delete(context.Background(), node) })
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = k.port()
	setStatus(t, node)
	return node.Name
}

// syncBuffer is a bytes buffer a command writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPortForwardCarriesTheWebAppThroughTheAPIServer(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "kez-chat web app at %s", r.URL.Path)
	}))
	t.Cleanup(web.Close)
	kubelet := startFakeKubelet(t, web.Listener.Addr().String(), nil)
	node := onFakeKubelet(t, kubelet)

	ns := testNamespace(t)
	mustCreate(t, newKezChat(ns, "team"), serverService(ns, "team"))
	pod := serverPod(ns, "team", "team-server-a", node)
	mustCreate(t, pod)
	setRunning(t, pod, true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, outW := io.Pipe()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"port-forward", "team", "0", "-n", ns, "--kubeconfig", kubeconfig}, outW, &stderr)
		outW.Close()
	}()
	line := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(&lineReader{r: out}, 4096))
		line <- string(b)
		io.Copy(io.Discard, out)
	}()
	var printed string
	select {
	case printed = <-line:
	case code := <-done:
		t.Fatalf("port-forward ended (exit %d) before it listened: %s", code, stderr.String())
	}
	_, url, ok := strings.Cut(printed, "Open ")
	url, _, _ = strings.Cut(url, " ")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.Contains(printed, "to pod team-server-a port 6969") {
		t.Fatalf("port-forward printed %q", printed)
	}

	// Two connections, one stream pair each.
	browser := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"/", "/settings"} {
		resp, err := browser.Get(strings.TrimSuffix(url, "/") + path)
		if err != nil {
			t.Fatalf("GET %s through the forward: %v (stderr %s)", path, err, stderr.String())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "kez-chat web app at "+path {
			t.Errorf("GET %s through the forward = %q", path, body)
		}
	}
	kubelet.mu.Lock()
	ports := strings.Join(kubelet.ports, ",")
	kubelet.mu.Unlock()
	if ports != "6969,6969" {
		t.Errorf("the kubelet was asked for ports %s, want the server's 6969 twice", ports)
	}

	cancel()
	if code := <-done; code != 0 {
		t.Errorf("port-forward ended with %d after Ctrl-C: %s", code, stderr.String())
	}
}

// lineReader reads up to and including the first newline, then EOF.
type lineReader struct {
	r    io.Reader
	done bool
}

func (l *lineReader) Read(p []byte) (int, error) {
	if l.done {
		return 0, io.EOF
	}
	n, err := l.r.Read(p[:1])
	if n == 1 && p[0] == '\n' {
		l.done = true
	}
	return n, err
}

func TestLogsAndReportReadContainerLogsThroughTheAPIServer(t *testing.T) {
	ns := testNamespace(t)
	kubelet := startFakeKubelet(t, "127.0.0.1:1", map[string]string{
		ns + "/team-server-a/server": `{"level":"INFO","msg":"listening","addr":":6969"}` + "\n" +
			`{"level":"WARN","msg":"push failed","endpoint":"https://push.example/x","authorization":"vapid t=` + sentinel + `"}` + "\n",
	})
	node := onFakeKubelet(t, kubelet)
	mustCreate(t, newKezChat(ns, "team"))
	pod := serverPod(ns, "team", "team-server-a", node)
	mustCreate(t, pod)
	setRunning(t, pod, true)

	code, out, stderr := runPlugin(t, "logs", "team", "server", "-n", ns, "--tail", "5")
	if code != 0 {
		t.Fatalf("logs: exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(out, `{"level":"INFO","msg":"listening","addr":":6969"}`+"\n") {
		t.Errorf("logs printed %q", out)
	}

	b, err := collectReport(context.Background(), testKube(t, ns), "team", reportOptions{logLines: 100}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var log string
	for _, f := range b.files {
		if f.name == "logs/team-server-a/server.log" {
			log = string(f.data)
		}
	}
	if !strings.Contains(log, `"msg":"listening"`) || !strings.Contains(log, `"authorization":"REDACTED"`) || strings.Contains(log, sentinel) {
		t.Errorf("the report's log of team-server-a/server:\n%s\nerrors: %v", log, b.errors)
	}
}
