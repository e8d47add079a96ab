package server

import (
	"context"
	"crypto/ecdh"
	"fmt"
	"net/url"
	"time"

	"kez.lat/chat/server/signing"
)

// PushSubscription is a browser's Web Push subscription for a handle: where
// to POST, and the keys the push payload is encrypted to (RFC 8291).
type PushSubscription struct {
	Handle    string
	Endpoint  string
	P256dh    []byte // the browser's P-256 public key, 65-byte uncompressed point
	Auth      []byte // the 16-byte authentication secret
	CreatedAt time.Time
}

// PushSubscriptionJSON is what pushManager.subscribe's PushSubscription
// serializes to (PushSubscription.toJSON()).
type PushSubscriptionJSON struct {
	Endpoint string `json:"endpoint"`
	// ExpirationTime is sent by browsers (usually null); it is accepted and
	// ignored, since push services tell us of expiry with 404 or 410.
	ExpirationTime *float64 `json:"expirationTime,omitempty"`
	Keys           struct {
		P256dh string `json:"p256dh"`
		Auth   string `json:"auth"`
	} `json:"keys"`
}

// PushNotice is the whole plaintext of every push: routing metadata only,
// never ciphertext or plaintext of a message.
type PushNotice struct {
	Type string `json:"type"` // "message"
	To   string `json:"to"`
	Seq  uint64 `json:"seq"`
}

// Pusher sends push notices off the request path.
type Pusher interface {
	// Notify queues a notice that handle's inbox holds seq. It never
	// blocks: when the queue is full the notice is dropped and counted.
	Notify(handle string, seq uint64)
}

// Presence knows which handles have a stream open on other replicas, so
// that a recipient watching the chat anywhere is not pushed to.
type Presence interface {
	// Streaming reports whether some other replica has a stream open for
	// handle now.
	Streaming(ctx context.Context, handle string) (bool, error)
}

// EndpointPolicy decides which push endpoints the server will POST to.
type EndpointPolicy interface {
	// CheckEndpoint returns an endpoint_not_allowed *Error for an endpoint
	// the server must not contact.
	CheckEndpoint(ctx context.Context, endpoint string) error
}

// MaxEndpointLength bounds a subscription's endpoint URL.
const MaxEndpointLength = 1024

// parsePushSubscription validates a browser subscription's shape and keys.
func parsePushSubscription(handle string, j PushSubscriptionJSON) (*PushSubscription, error) {
	if err := checkEndpointSyntax(j.Endpoint); err != nil {
		return nil, err
	}
	p256dh, err := signing.DecodeB64(j.Keys.P256dh)
	if err != nil {
		return nil, Errorf(CodeInvalidEncoding, "keys.p256dh is not base64url without padding")
	}
	if _, err := ecdh.P256().NewPublicKey(p256dh); err != nil {
		return nil, Errorf(CodeInvalidField, "keys.p256dh is not an uncompressed P-256 point")
	}
	auth, err := signing.DecodeB64(j.Keys.Auth)
	if err != nil {
		return nil, Errorf(CodeInvalidEncoding, "keys.auth is not base64url without padding")
	}
	if len(auth) != 16 {
		return nil, Errorf(CodeInvalidField, "keys.auth must be 16 bytes, got %d", len(auth))
	}
	return &PushSubscription{Handle: handle, Endpoint: j.Endpoint, P256dh: p256dh, Auth: auth}, nil
}

// checkEndpointSyntax accepts an absolute http(s) URL without credentials
// or fragment; which hosts are allowed is the EndpointPolicy's call.
func checkEndpointSyntax(endpoint string) error {
	if endpoint == "" || len(endpoint) > MaxEndpointLength {
		return Errorf(CodeInvalidField, "endpoint must be a URL of at most %d bytes", MaxEndpointLength)
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return Errorf(CodeInvalidField, "endpoint must be an absolute https URL")
	}
	return nil
}

// PushEnabled reports whether this server sends Web Push.
func (s *Service) PushEnabled() bool { return s.Pusher != nil }

// SubscribePush stores handle's subscription after the endpoint passes the
// policy. The caller authenticated the request over the endpoint.
func (s *Service) SubscribePush(ctx context.Context, handle string, j PushSubscriptionJSON) error {
	if !s.PushEnabled() {
		return Errorf(CodePushDisabled, "this server does not send Web Push")
	}
	sub, err := parsePushSubscription(handle, j)
	if err != nil {
		return err
	}
	if err := s.Endpoints.CheckEndpoint(ctx, sub.Endpoint); err != nil {
		return err
	}
	sub.CreatedAt = s.now()
	if err := s.store.SavePushSubscription(ctx, sub, s.cfg.MaxPushSubscriptions); err != nil {
		return fmt.Errorf("saving push subscription of %s: %w", handle, err)
	}
	return nil
}

// UnsubscribePush forgets handle's subscription at endpoint; forgetting one
// that is not there is not an error.
func (s *Service) UnsubscribePush(ctx context.Context, handle, endpoint string) error {
	if !s.PushEnabled() {
		return Errorf(CodePushDisabled, "this server does not send Web Push")
	}
	if err := checkEndpointSyntax(endpoint); err != nil {
		return err
	}
	if _, err := s.store.DeletePushSubscription(ctx, handle, endpoint); err != nil {
		return fmt.Errorf("deleting push subscription of %s: %w", handle, err)
	}
	return nil
}

// notifyOffline queues a push for e's recipient when no stream of theirs is
// open on this replica: a person watching the chat needs no notification.
// The Pusher asks the other replicas (Presence) off the request path.
func (s *Service) notifyOffline(e *Envelope) {
	if s.Pusher != nil && !s.HasStream(e.Recipient) {
		s.Pusher.Notify(e.Recipient, e.Seq)
	}
}
