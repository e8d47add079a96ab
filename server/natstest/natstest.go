// Package natstest runs real nats-servers with JetStream inside the
// calling process, on loopback ports, with their stores in a directory the
// caller owns: one server, or a cluster of them as the operator deploys
// with nats.replicas 3. Tests and the load generator measure the chat
// server against them. It does not import testing, so that the load
// generator can link it; the kezchat binary never does.
package natstest

import (
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Options describe a server; Dir is required.
type Options struct {
	// Name is the server's name (a cluster's servers get -0, -1, ...).
	Name string
	// Dir holds JetStream's store.
	Dir string
	// WebSocket adds a WebSocket listener on loopback, without TLS.
	WebSocket bool
	// CalloutIssuer, when set (a public account nkey), turns on the auth
	// callout: every client but User is authorized by the service that
	// answers on $SYS.REQ.USER.AUTH, as chat servers do with
	// --nats-callout-issuer-seed-file. User and Password are the one user
	// the server config defines (the chat server's); required with it.
	CalloutIssuer  string
	User, Password string
	// SyncAlways fsyncs every write before JetStream acknowledges it
	// (sync_interval: always), as the operator configures a single NATS.
	SyncAlways bool
	// MaxPending bounds what the server buffers for one client (nats-server's
	// default when zero).
	MaxPending int64
	// Monitor serves nats-server's HTTP monitoring endpoints (/varz,
	// /jsz, /healthz) on a free loopback port: Server.MonitorAddr().
	Monitor bool
}

// Server is one nats-server.
type Server struct {
	// Server is the running nats-server; nil while shut down.
	Server *natsserver.Server
	// URL is the client URL (without credentials); WSURL the WebSocket
	// one, with Options.WebSocket.
	URL, WSURL string
	opts       *natsserver.Options
}

// Start configures and starts a server on free loopback ports.
func Start(o Options) (*Server, error) {
	opts, err := serverOptions(o, o.Name, o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, URL: fmt.Sprintf("nats://127.0.0.1:%d", opts.Port)}
	if o.WebSocket {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		opts.Websocket = natsserver.WebsocketOpts{Host: "127.0.0.1", Port: port, NoTLS: true}
		s.WSURL = fmt.Sprintf("ws://127.0.0.1:%d", port)
	}
	if o.CalloutIssuer != "" {
		opts.Users = []*natsserver.User{{Username: o.User, Password: o.Password}}
		opts.AuthCallout = &natsserver.AuthCallout{Issuer: o.CalloutIssuer, AuthUsers: []string{o.User}}
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Start starts the server again, after Shutdown, on the same ports and
// store: its clients reconnect to the URL they know.
func (s *Server) Start() error {
	// The server keeps state in its Options; each start gets a copy.
	opts := *s.opts
	ns, err := startServer(&opts)
	if err != nil {
		return err
	}
	s.Server = ns
	return nil
}

// Shutdown stops the server and waits until it has stopped; Start starts
// it again.
func (s *Server) Shutdown() {
	if s.Server != nil {
		s.Server.Shutdown()
		s.Server.WaitForShutdown()
		s.Server = nil
	}
}

// Cluster is clustered nats-servers sharing JetStream.
type Cluster struct {
	Servers []*natsserver.Server
}

// StartCluster starts n clustered servers, each storing under o.Dir, and
// returns once JetStream can place streams on all of them: a meta leader
// that every server follows has heard from every server.
func StartCluster(n int, o Options) (*Cluster, error) {
	routePorts := make([]int, n)
	var routes []*neturl.URL
	for i := range routePorts {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		routePorts[i] = port
		routes = append(routes, &neturl.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", port)})
	}
	c := &Cluster{}
	for i := range n {
		opts, err := serverOptions(o, fmt.Sprintf("%s-%d", o.Name, i), filepath.Join(o.Dir, strconv.Itoa(i)))
		if err != nil {
			c.Shutdown()
			return nil, err
		}
		opts.Cluster = natsserver.ClusterOpts{Name: o.Name, Host: "127.0.0.1", Port: routePorts[i]}
		opts.Routes = routes
		s, err := startServer(opts)
		if err != nil {
			c.Shutdown()
			return nil, fmt.Errorf("nats-server %d: %w", i, err)
		}
		c.Servers = append(c.Servers, s)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.jetStreamReady() {
		if time.Now().After(deadline) {
			c.Shutdown()
			return nil, errors.New("the NATS cluster's JetStream was not ready within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c, nil
}

func (c *Cluster) jetStreamReady() bool {
	leader := false
	for _, s := range c.Servers {
		if !s.JetStreamIsCurrent() {
			return false
		}
		if s.JetStreamIsLeader() {
			leader = len(s.JetStreamClusterPeers()) == len(c.Servers)
		}
	}
	return leader
}

// URL is every server's client URL, comma-separated as nats.go takes them.
func (c *Cluster) URL() string {
	var urls []string
	for _, s := range c.Servers {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// Shutdown stops every server and waits until they have stopped.
func (c *Cluster) Shutdown() {
	for _, s := range c.Servers {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// FreePort is a loopback TCP port free a moment ago; a server restarted on
// it keeps its clients' URL.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// serverOptions is a quiet server on a free loopback port with JetStream
// in dir.
func serverOptions(o Options, name, dir string) (*natsserver.Options, error) {
	if o.Dir == "" {
		return nil, errors.New("natstest: Options.Dir is required")
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	opts := &natsserver.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
		SyncAlways: o.SyncAlways,
		MaxPending: o.MaxPending,
	}
	if o.Monitor {
		if opts.HTTPPort, err = FreePort(); err != nil {
			return nil, err
		}
		opts.HTTPHost = "127.0.0.1"
	}
	return opts, nil
}

// startServer starts a server and waits until it takes connections.
func startServer(opts *natsserver.Options) (*natsserver.Server, error) {
	s, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("configuring nats-server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server %s was not ready within 10s", opts.ServerName)
	}
	return s, nil
}
