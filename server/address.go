package server

import (
	"net"
	"strconv"
	"strings"
)

// MaxDomainLength bounds a domain, as DNS does a name.
const MaxDomainLength = 253

// Address is a person anywhere: handle@domain (docs/protocol.md,
// "Addresses").
type Address struct {
	Handle string
	Domain string
}

func (a Address) String() string { return a.Handle + "@" + a.Domain }

// ParseAddress parses "handle@domain". loopback also admits the test
// domains 127.0.0.1:<port> and localhost:<port>.
func ParseAddress(s string, loopback bool) (Address, error) {
	handle, domain, ok := strings.Cut(s, "@")
	if !ok {
		return Address{}, Errorf(CodeInvalidField, "%q is not an address handle@domain", s)
	}
	if err := checkHandleSyntax(handle); err != nil {
		return Address{}, err
	}
	if err := CheckDomain(domain, loopback); err != nil {
		return Address{}, err
	}
	return Address{Handle: handle, Domain: domain}, nil
}

// CheckDomain accepts a lowercase DNS name of at most 253 bytes whose
// labels are a-z 0-9 and - (not at either end); with loopback, also
// 127.0.0.1:<port> and localhost:<port>.
func CheckDomain(d string, loopback bool) error {
	if loopback && IsLoopbackDomain(d) {
		return nil
	}
	if d == "" || len(d) > MaxDomainLength {
		return Errorf(CodeInvalidField, "domain must be 1 to %d bytes", MaxDomainLength)
	}
	for l := range strings.SplitSeq(d, ".") {
		if !IsDNSLabel(l) {
			return Errorf(CodeInvalidField, "domain %q is not a lowercase DNS name", d)
		}
	}
	return nil
}

// IsLoopbackDomain reports whether d is a test domain on loopback:
// 127.0.0.1:<port> or localhost:<port>.
func IsLoopbackDomain(d string) bool {
	host, port, err := net.SplitHostPort(d)
	if err != nil || (host != "127.0.0.1" && host != "localhost") {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 65536 && strconv.Itoa(n) == port
}

// IsDNSLabel reports whether l is one label of a lowercase DNS name: 1 to
// 63 of a-z 0-9 and -, not starting or ending with -.
func IsDNSLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// DomainPolicy says which other servers this one federates with: every
// domain but those blocked, or, with an allow-list, only those on it.
type DomainPolicy struct {
	Allow map[string]bool // empty: every domain not blocked
	Block map[string]bool
}

// NewDomainPolicy returns the policy of the --federation-allow and
// --federation-block lists.
func NewDomainPolicy(allow, block []string) DomainPolicy {
	p := DomainPolicy{Allow: map[string]bool{}, Block: map[string]bool{}}
	for _, d := range allow {
		p.Allow[strings.ToLower(d)] = true
	}
	for _, d := range block {
		p.Block[strings.ToLower(d)] = true
	}
	return p
}

// Check refuses, with domain_blocked, a domain this server does not
// federate with.
func (p DomainPolicy) Check(domain string) error {
	if p.Block[domain] || (len(p.Allow) > 0 && !p.Allow[domain]) {
		return Errorf(CodeDomainBlocked, "this server does not federate with %s", domain)
	}
	return nil
}
