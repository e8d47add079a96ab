package push

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"

	"kez.lat/chat/server"
	"kez.lat/chat/server/egress"
)

// result is what one request to a push service came to.
type result struct {
	status     int
	retryAfter time.Duration // asked for by a 429 or 503
	body       string        // the start of an error answer, for the log
	err        error         // no answer at all
}

// maxErrorBody bounds what is read and logged of an error answer.
const maxErrorBody = 512

// deliver sends payload to sub, retrying a 429, a 5xx or a network error
// with backoff up to MaxAttempts, and deletes the subscription when its
// push service says it is gone.
func (s *Sender) deliver(sub *server.PushSubscription, payload []byte, topic string) {
	log := s.log.With("handle", sub.Handle, "push_host", hostOf(sub.Endpoint))
	for attempt := 1; ; attempt++ {
		r := s.post(sub, payload, topic)
		switch {
		case r.err == nil && r.status >= 200 && r.status < 300:
			s.metrics.sent.Inc()
			log.Debug("push sent", "status", r.status, "attempt", attempt)
			return
		case r.status == http.StatusNotFound || r.status == http.StatusGone:
			s.metrics.pruned.Inc()
			s.prune(sub, r, log)
			return
		case s.ctx.Err() != nil:
			s.metrics.dropped.Inc()
			return
		case !retryable(r):
			s.metrics.failed.Inc()
			log.Warn("push refused", "status", r.status, "body", r.body, "err", r.err)
			return
		}
		wait, ok := s.backoff(attempt, r.retryAfter)
		if !ok || attempt >= s.cfg.MaxAttempts {
			s.metrics.failed.Inc()
			log.Warn("push failed", "status", r.status, "err", r.err, "body", r.body,
				"attempts", attempt, "retry_after", r.retryAfter)
			return
		}
		s.metrics.retried.Inc()
		log.Debug("push retry", "status", r.status, "err", r.err, "attempt", attempt, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			s.metrics.dropped.Inc()
			return
		}
	}
}

// post makes one request. The endpoint is checked again, as the policy may
// have changed since the subscription was stored.
func (s *Sender) post(sub *server.PushSubscription, payload []byte, topic string) result {
	if _, _, err := s.policy.checkURL(sub.Endpoint); err != nil {
		return result{err: err}
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	opts := s.opts
	opts.Topic = topic
	// webpush-go appends the padding to the payload's backing array, so
	// each call gets a copy of its own.
	resp, err := webpush.SendNotificationWithContext(ctx, bytes.Clone(payload), &webpush.Subscription{
		Endpoint: sub.Endpoint,
		Keys: webpush.Keys{
			P256dh: base64.RawURLEncoding.EncodeToString(sub.P256dh),
			Auth:   base64.RawURLEncoding.EncodeToString(sub.Auth),
		},
	}, &opts)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	r := result{status: resp.StatusCode}
	if r.status >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		r.body = string(b)
		r.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	// Reading the rest lets the connection be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return r
}

// retryable reports whether another attempt may succeed: the push service
// was overloaded or failed, or the network did. A refused address or a
// subscription the library cannot encrypt to will not change.
func retryable(r result) bool {
	if r.err != nil {
		var uerr *url.Error // the request was made, and had no answer
		return errors.As(r.err, &uerr) && !errors.Is(r.err, egress.ErrNonPublicAddress)
	}
	return r.status == http.StatusTooManyRequests || r.status >= 500
}

// backoff is how long to wait before attempt+1: exponential from
// RetryBase with jitter, so a burst of failures does not retry in step,
// capped at RetryMax, and at least what the push service asked for. It
// reports false when the service asked for more than RetryMax: retrying
// sooner would only be refused again.
func (s *Sender) backoff(attempt int, retryAfter time.Duration) (time.Duration, bool) {
	if retryAfter > s.cfg.RetryMax {
		return 0, false
	}
	d := s.cfg.RetryBase
	for i := 1; i < attempt && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	d = d/2 + rand.N(d/2+1)
	return max(d, retryAfter), true
}

// parseRetryAfter reads a Retry-After of seconds or an HTTP date; 0 when
// absent or malformed.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// prune deletes a subscription its push service no longer knows.
func (s *Sender) prune(sub *server.PushSubscription, r result, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	deleted, err := s.store.DeletePushSubscription(ctx, sub.Handle, sub.Endpoint)
	if err != nil {
		log.Error("push: deleting an expired subscription", "status", r.status, "err", err)
		return
	}
	if deleted {
		s.metrics.subscriptionsPruned.Inc()
	}
	log.Info("push subscription expired; deleted", "status", r.status)
}

// hostOf is what the log says of an endpoint: its host. The whole URL
// identifies one browser.
func hostOf(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil {
		return u.Host
	}
	return ""
}
