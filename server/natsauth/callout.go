// Package natsauth is the NATS auth-callout service of the chat server: it
// lets a browser follow its own inbox over the NATS WebSocket listener.
//
// A client connects with user = its handle and password = a request
// signature (X-KEZ-Auth form, <ts>:<sig>) over
//
//	<server>\nNATS\nkez.chat.inbox.<token>\n<ts>
//
// made by the handle's registered key or a device key. NATS hands the
// CONNECT to this service on $SYS.REQ.USER.AUTH; the service verifies the
// signature as the HTTP API does and answers with a user JWT, signed by the
// callout issuer, that may subscribe to that one subject and publish
// nothing, or with an error.
package natsauth

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// Subject is where NATS servers send authorization requests.
const Subject = "$SYS.REQ.USER.AUTH"

// Method is the method line of the signed string.
const Method = "NATS"

// Authenticator verifies a request signature (server.Service).
type Authenticator interface {
	Authenticate(ctx context.Context, a server.RequestAuth) (*server.Session, error)
}

// Config tunes the callout.
type Config struct {
	// Issuer is the account nkey whose public key is auth_callout.issuer.
	Issuer nkeys.KeyPair
	// Account the users are placed in: "$G", the global account, unless
	// nats.conf defines accounts.
	Account string
	// Validity is how long an issued user JWT lasts at most (default 1
	// hour); it never outlives the signature it was issued for, which
	// leaves the clock-skew window within 10 minutes. The connection is
	// closed then and the client connects again with a fresh signature.
	Validity time.Duration
}

// Limits of an issued user: it subscribes to its inbox subject and
// publishes nothing, so these bound a client that tries anything else.
const (
	maxSubscriptions = 4
	maxPayload       = 1 << 10
)

// LoadIssuer reads an account seed (SA...) from path.
func LoadIssuer(path string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("%s: not an account seed (SA...)", path)
	}
	return kp, nil
}

// Callout answers authorization requests until Close.
type Callout struct {
	cfg  Config
	auth Authenticator
	log  *slog.Logger
	sub  *nats.Subscription

	// Refusals are counted, and logged at most once a second with how
	// many were not: a stranger's failures cost one line a second.
	refused  atomic.Uint64
	mu       sync.Mutex
	loggedAt time.Time
	unlogged uint64
}

// Refused counts the authorization requests refused.
func (c *Callout) Refused() uint64 { return c.refused.Load() }

// logRefusal logs a refusal unless one was logged within the last second.
func (c *Callout) logRefusal(handle, code string) {
	c.refused.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.loggedAt) < time.Second {
		c.unlogged++
		return
	}
	c.log.Warn("NATS auth callout: refused", "handle", handle, "code", code, "refusals_not_logged", c.unlogged)
	c.loggedAt, c.unlogged = time.Now(), 0
}

// Start subscribes nc, which must belong to one of auth_callout.auth_users,
// to the authorization requests (a queue group, so one replica answers).
func Start(nc *nats.Conn, cfg Config, auth Authenticator, log *slog.Logger) (*Callout, error) {
	if cfg.Account == "" {
		cfg.Account = "$G"
	}
	if cfg.Validity <= 0 {
		cfg.Validity = time.Hour
	}
	c := &Callout{cfg: cfg, auth: auth, log: log}
	sub, err := nc.QueueSubscribe(Subject, "kezchat-auth-callout", c.handle)
	if err != nil {
		return nil, fmt.Errorf("subscribing to %s: %w", Subject, err)
	}
	c.sub = sub
	return c, nil
}

// Close stops answering.
func (c *Callout) Close() { _ = c.sub.Unsubscribe() }

func (c *Callout) handle(m *nats.Msg) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		c.log.Warn("NATS auth callout: undecodable request", "err", err)
		return
	}
	userJWT, reason := c.authorize(req)
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	resp.Jwt, resp.Error = userJWT, reason
	tok, err := resp.Encode(c.cfg.Issuer)
	if err != nil {
		c.log.Error("NATS auth callout: signing the response", "err", err)
		return
	}
	if err := m.Respond([]byte(tok)); err != nil {
		c.log.Warn("NATS auth callout: responding", "err", err)
	}
}

// authorize returns a user JWT, or the reason it refuses.
func (c *Callout) authorize(req *jwt.AuthorizationRequestClaims) (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	handle := req.ConnectOptions.Username
	subject := natsbus.InboxSubject(handle)
	sess, err := c.auth.Authenticate(ctx, server.RequestAuth{
		Handle: handle, Method: Method, Path: subject, Header: req.ConnectOptions.Password,
	})
	if err != nil {
		c.logRefusal(handle, server.ErrorCode(err))
		return "", "not authorized"
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = handle
	uc.Audience = c.cfg.Account
	uc.Expires = min(time.Now().Add(c.cfg.Validity).Unix(), sess.Expires.Unix())
	uc.Pub.Deny.Add(">")
	uc.Sub.Allow.Add(subject)
	uc.Limits.Subs = maxSubscriptions
	uc.Limits.Payload = maxPayload
	tok, err := uc.Encode(c.cfg.Issuer)
	if err != nil {
		c.log.Error("NATS auth callout: signing a user JWT", "err", err)
		return "", "internal error"
	}
	return tok, ""
}
