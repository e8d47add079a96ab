package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"kez.lat/chat/server"
)

// A person on another server is looked up at that server, never at this
// client's own (docs/protocol.md, "Conversations across servers"): its
// domain's WebFinger links its record and its key document, which the
// client checks as it checks a local peer's, pinned by address.

// maxRedirects bounds the redirects a request to another server follows,
// each to an https URL (or a loopback test domain's, when allowed).
const maxRedirects = 5

// Name parses s, a handle or an address handle@domain, as this client
// names people: an address at its own server's domain is the bare handle.
// A loopback test domain is refused unless InsecureLoopback.
func (c *Client) Name(ctx context.Context, s string) (Address, error) {
	a, err := ParseAddress(s, true)
	if err != nil || a.IsLocal() {
		return a, err
	}
	own, err := c.Domain(ctx)
	if err != nil {
		return Address{}, err
	}
	if a.Domain == own {
		return Address{Handle: a.Handle}, nil
	}
	if IsLoopbackDomain(a.Domain) && !c.InsecureLoopback {
		return Address{}, usageError{fmt.Errorf("%s: %w", s, errLoopbackDomain)}
	}
	return a, nil
}

// DomainURL is the origin of the server of domain: https://<domain>, or
// http://<domain> for a loopback test domain when InsecureLoopback.
func (c *Client) DomainURL(domain string) (string, error) {
	if err := CheckDomain(domain, c.InsecureLoopback); err != nil {
		return "", usageError{err}
	}
	if IsLoopbackDomain(domain) {
		return "http://" + domain, nil
	}
	return "https://" + domain, nil
}

// checkLink accepts what this client fetches from another server: an
// absolute https URL without user info, or a plain http one on a loopback
// test domain when InsecureLoopback.
func (c *Client) checkLink(link string) error {
	u, err := url.Parse(link)
	switch {
	case err != nil || u.Host == "" || u.User != nil:
		return fmt.Errorf("link %.200q is not an absolute URL", link)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && c.InsecureLoopback && IsLoopbackDomain(u.Host):
		return nil
	}
	return fmt.Errorf("link %.200q is not https", link)
}

// remoteHTTP is the http.Client of requests to other servers: this
// Client's, bounded by its timeout (DefaultTimeout when it has none), and
// following a redirect only to a URL checkLink accepts.
func (c *Client) remoteHTTP() *http.Client {
	hc := *c.http
	if hc.Timeout <= 0 {
		hc.Timeout = DefaultTimeout
	}
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("more than %d redirects", maxRedirects)
		}
		return c.checkLink(req.URL.String())
	}
	return &hc
}

// resolveRemote fetches the record of a, an address on another server,
// from its domain: WebFinger for acct:handle@domain, whose subject must be
// that, then its self link (the record, which must be a's, with a
// primary_id that derives from its key), and the key directory its
// https://kez.lat/rel/keys link names (nil when it links none), which may
// be on another origin. Each answer is bounded; nothing is checked
// against pins here (checkPeer does).
func (c *Client) resolveRemote(ctx context.Context, a Address) (*User, *Client, error) {
	base, err := c.DomainURL(a.Domain)
	if err != nil {
		return nil, nil, err
	}
	resource := "acct:" + a.Handle + "@" + a.Domain
	var j JRD
	_, err = c.do(ctx, request{
		method: http.MethodGet,
		link:   base + "/.well-known/webfinger?" + url.Values{"resource": {resource}}.Encode(),
		accept: "application/jrd+json, application/json",
		limit:  maxSmallBody,
	}, &j)
	if err != nil {
		return nil, nil, fmt.Errorf("finding %s at %s: %w", a, a.Domain, err)
	}
	if j.Subject != resource {
		return nil, nil, fmt.Errorf("finding %s: %s answered WebFinger about %.100q", a, a.Domain, j.Subject)
	}
	var self, keys string
	for _, l := range j.Links {
		switch {
		case l.Rel == "self" && self == "":
			self = l.Href
		case l.Rel == relKeys && keys == "":
			keys = l.Href
		}
	}
	if self == "" {
		return nil, nil, fmt.Errorf("finding %s: %s's WebFinger links no record", a, a.Domain)
	}
	var uj server.PublicUser
	if _, err := c.do(ctx, request{method: http.MethodGet, link: self, limit: maxSmallBody}, &uj); err != nil {
		return nil, nil, fmt.Errorf("the record of %s: %w", a, err)
	}
	u, err := uj.User()
	if err != nil {
		return nil, nil, fmt.Errorf("the record of %s: %w", a, err)
	}
	if u.Handle != a.Handle || u.Server != a.Domain {
		return nil, nil, fmt.Errorf("asked %s for %s, it answered the record of %s", a.Domain, a, u.Address())
	}
	if keys == "" {
		return u, nil, nil
	}
	dirURL, ok := strings.CutSuffix(keys, "/v1/keys/"+u.PrimaryID)
	if !ok {
		return nil, nil, fmt.Errorf("%w: WebFinger links the keys of %s to %.200s", ErrKeyDocumentMismatch, a, keys)
	}
	if err := c.checkLink(keys); err != nil {
		return nil, nil, fmt.Errorf("the keys of %s: %w", a, err)
	}
	dir := New(dirURL, c.remoteHTTP())
	dir.InsecureLoopback = c.InsecureLoopback
	return u, dir, nil
}
