package client

import (
	"errors"
	"fmt"
	"strings"

	"kez.lat/chat/server"
)

// People on other servers (docs/protocol.md, "Federation"): a person is
// named by an address, handle@domain. This client names every person as
// its own server would have a writer name them: by bare handle on its own
// server, by address elsewhere. A name read from another server's person
// is qualified with that writer's domain (QualifyName).

// Address is a person: a handle and the domain of its server, "" for this
// client's own server (a bare handle is always local).
type Address struct {
	Handle string
	Domain string
}

// String is the address as this client writes it: the bare handle on its
// own server, handle@domain elsewhere.
func (a Address) String() string {
	if a.Domain == "" {
		return a.Handle
	}
	return a.Handle + "@" + a.Domain
}

// IsLocal reports whether a is on this client's own server.
func (a Address) IsLocal() bool { return a.Domain == "" }

// ParseAddress parses a bare handle (Domain "") or handle@domain, the
// handle as registration allows it and the domain a lowercase DNS name of
// at most 253 bytes; with loopback, also the test domains
// 127.0.0.1:<port> and localhost:<port>. It does not know this client's
// domain: see Client.Name, which names a person at it by bare handle.
func ParseAddress(s string, loopback bool) (Address, error) {
	handle, domain, found := strings.Cut(s, "@")
	if err := server.ValidateHandle(handle); err != nil {
		return Address{}, fmt.Errorf("%.80q is not a handle or an address handle@domain: %w", s, err)
	}
	if !found {
		return Address{Handle: handle}, nil
	}
	if err := CheckDomain(domain, loopback); err != nil {
		return Address{}, fmt.Errorf("%.80q is not an address handle@domain: %w", s, err)
	}
	return Address{Handle: handle, Domain: domain}, nil
}

// errLoopbackDomain refuses a loopback test domain to a client not told
// to take one (Client.InsecureLoopback).
var errLoopbackDomain = errors.New("a loopback test domain, reached over plain HTTP, which only a client told so takes (--insecure-loopback)")

// CheckDomain accepts a server's domain as the server does
// (server.CheckDomain): a lowercase DNS name of at most 253 bytes, labels
// of a-z 0-9 - (not at either end); with loopback, also 127.0.0.1:<port>
// and localhost:<port>.
func CheckDomain(d string, loopback bool) error {
	if IsLoopbackDomain(d) {
		if !loopback {
			return fmt.Errorf("domain %.80q: %w", d, errLoopbackDomain)
		}
		return nil
	}
	if err := server.CheckDomain(d, false); err != nil {
		return fmt.Errorf("domain %.80q is not a lowercase DNS name of at most %d bytes", d, server.MaxDomainLength)
	}
	return nil
}

// IsLoopbackDomain reports whether d is a test domain on loopback:
// 127.0.0.1:<port> or localhost:<port>, the port without sign or leading
// zeros.
func IsLoopbackDomain(d string) bool { return server.IsLoopbackDomain(d) }

// checkName checks a name as plaintexts carry it: a handle, or an address
// (a loopback test domain included: whether it may be reached is the
// reader's to decide when it reaches it).
func checkName(s string) error {
	_, err := ParseAddress(s, true)
	return err
}

// LocalName is name as a client of the server own names it: an address at
// own is its bare handle; any other name is unchanged. name must be well
// formed (checkName).
func LocalName(name, own string) string {
	if h, d, ok := strings.Cut(name, "@"); ok && d == own {
		return h
	}
	return name
}

// QualifyName is a name a writer on the server writer wrote, as a client
// of the server own names it: a bare handle is the writer's server's
// (handle@writer), and an address at own is the bare handle. It refuses a
// name that is not a handle or an address.
func QualifyName(name, writer, own string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	if !strings.Contains(name, "@") && writer != own {
		name += "@" + writer
	}
	return LocalName(name, own), nil
}
