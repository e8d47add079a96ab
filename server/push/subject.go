package push

import (
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"strings"
)

// NormalizeSubject checks the VAPID subject (RFC 8292 §2.1), the contact a
// push service uses when it has a problem with this server: a mailto: or
// https: URL. A bare e-mail address becomes a mailto: URL. Apple refuses
// subjects at localhost, so those are refused here, at startup, rather than
// on every push.
func NormalizeSubject(s string) (string, error) {
	s = strings.TrimSpace(s)
	scheme, rest, hasScheme := strings.Cut(s, ":")
	switch {
	case s == "":
		return "", errors.New("VAPID subject is empty; want a mailto: or https: URL, e.g. mailto:ops@chat.example")
	case !hasScheme && strings.Contains(s, "@"):
		return checkMailto(s)
	case strings.EqualFold(scheme, "mailto"):
		return checkMailto(rest)
	case strings.EqualFold(scheme, "https"):
		return checkHTTPS(s)
	case strings.EqualFold(scheme, "http"):
		return "", fmt.Errorf("VAPID subject %q must be https, not http", s)
	default:
		return "", fmt.Errorf("VAPID subject %q is neither a mailto: nor an https: URL nor an e-mail address", s)
	}
}

func checkMailto(addr string) (string, error) {
	a, err := mail.ParseAddress(addr)
	if err != nil || a.Name != "" || a.Address != addr {
		return "", fmt.Errorf("VAPID subject %q is not a plain e-mail address", addr)
	}
	if domain := addr[strings.LastIndex(addr, "@")+1:]; isLocalName(domain) {
		return "", fmt.Errorf("VAPID subject %q is at localhost, which push services refuse", addr)
	}
	return "mailto:" + addr, nil
}

func checkHTTPS(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("VAPID subject %q is not an https URL with a host", s)
	}
	if isLocalName(u.Hostname()) {
		return "", fmt.Errorf("VAPID subject %q is at localhost, which push services refuse", s)
	}
	return s, nil
}

// isLocalName reports whether host names this machine: localhost, a name
// under it (RFC 6761), or a loopback address.
func isLocalName(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.Unmap().IsLoopback()
}
