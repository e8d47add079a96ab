package httpapi

import (
	"net"
	"net/netip"
	"sync"
)

// ListenerLimits bound the connections a listener serves.
type ListenerLimits struct {
	// Total is how many connections are served at once; further clients
	// wait in the kernel's backlog until one closes.
	Total int
	// PerAddress is how many of them one client address (an IPv6 /64) may
	// hold (0: no cap); past it a new connection is closed at once, so one
	// host holding idle keep-alives or half-sent headers cannot take every
	// slot. Connections from Trusted proxies, which carry many clients,
	// are not capped per address.
	PerAddress int
	Trusted    []netip.Prefix
}

// LimitListener serves connections within limits.
func LimitListener(l net.Listener, limits ListenerLimits) net.Listener {
	return &limitListener{Listener: l, limits: limits, sem: make(chan struct{}, limits.Total),
		done: make(chan struct{}), perAddr: make(map[string]int)}
}

type limitListener struct {
	net.Listener
	limits    ListenerLimits
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	perAddr map[string]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		key, ok := l.admit(c)
		if !ok {
			c.Close()
			<-l.sem
			continue
		}
		return &limitConn{Conn: c, release: func() {
			if key != "" {
				l.mu.Lock()
				if l.perAddr[key]--; l.perAddr[key] <= 0 {
					delete(l.perAddr, key)
				}
				l.mu.Unlock()
			}
			<-l.sem
		}}, nil
	}
}

// admit counts c against its address's cap and returns the key it counted
// under ("" when not counted).
func (l *limitListener) admit(c net.Conn) (string, bool) {
	if l.limits.PerAddress <= 0 {
		return "", true
	}
	ip := peerIP(c.RemoteAddr().String())
	if !ip.IsValid() || trusted(l.limits.Trusted, ip) {
		return "", true
	}
	key := limitKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perAddr[key] >= l.limits.PerAddress {
		return "", false
	}
	l.perAddr[key]++
	return key, true
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
