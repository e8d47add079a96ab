package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{
		"server":  s.svc.Domain(),
		"status":  "ok",
		"version": s.cfg.Version,
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.svc.Ready(ctx); err != nil {
		s.log.WarnContext(ctx, "not ready", "err", err)
		if server.ErrorCode(err) == server.CodeStorageFull {
			writeError(w, err) // 507: the writer has no room
			return
		}
		writeError(w, server.Errorf(server.CodeUnavailable, "the database is unavailable"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	if !s.allow(w, s.cfg.RegisterLimiter, s.clientAddr(r)) {
		return
	}
	var doc signing.Signed
	if err := readJSON(w, r, maxRegisterBody, &doc); err != nil {
		s.fail(w, r, err)
		return
	}
	u, err := s.svc.Register(r.Context(), doc)
	if err != nil {
		s.failAuth(w, r, "", err)
		return
	}
	writeJSON(w, http.StatusCreated, u.Public())
}

func (s *Server) user(w http.ResponseWriter, r *http.Request) {
	// Public, and read by web apps of other servers' people.
	w.Header().Set("Access-Control-Allow-Origin", "*")
	u, err := s.svc.Record(r.Context(), r.PathValue("handle"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u.Public())
}

func (s *Server) sendMessage(w http.ResponseWriter, r *http.Request) {
	addr := s.clientAddr(r)
	if !s.allow(w, s.cfg.SendLimiter, addr) {
		return
	}
	var doc signing.Signed
	var size float64
	err := readBody(w, r, maxMessageBody, func(body []byte) error {
		size = float64(len(body))
		return server.DecodeSigned(body, &doc)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The address pays for what it stores, about its bodies' size; what
	// was not stored is given back.
	if !s.spendAddressQuota(w, r, addr, size) {
		return
	}
	receipt, replayed, err := s.svc.Send(r.Context(), doc)
	if err != nil || replayed {
		s.cfg.AddressQuota.Refund(addr, size)
	}
	if err != nil {
		s.failAuth(w, r, "", err)
		return
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	status := http.StatusCreated
	if receipt.State == server.OutboxQueued {
		status = http.StatusAccepted // stored here, to be delivered to another server
	}
	writeJSON(w, status, receipt)
}

// sendBatch stores one message per recipient, all or none. The header's
// signature binds the body's SHA-256; it is not use-once, since a retry
// stores nothing new.
func (s *Server) sendBatch(w http.ResponseWriter, r *http.Request) {
	addr := s.clientAddr(r)
	if !s.allow(w, s.cfg.SendLimiter, addr) {
		return
	}
	handle := r.PathValue("handle")
	var body server.BatchBody
	var sess *server.Session
	var size float64
	err := readBody(w, r, maxBatchBody, func(b []byte) error {
		size = float64(len(b))
		var err error
		sess, err = s.svc.Authenticate(r.Context(), server.RequestAuth{
			Handle:   handle,
			Method:   http.MethodPost,
			Path:     "/v1/batch/" + handle,
			Bindings: []string{bodyDigestBinding(b)},
			Header:   r.Header.Get("X-KEZ-Auth"),
		})
		if err != nil {
			return err
		}
		return server.DecodeJSON(b, &body)
	})
	if err != nil {
		s.failAuth(w, r, handle, err)
		return
	}
	if !s.spendAddressQuota(w, r, addr, size) {
		return
	}
	res, err := s.svc.SendBatch(r.Context(), sess, body.Messages)
	if err != nil {
		s.cfg.AddressQuota.Refund(addr, size)
		s.fail(w, r, err)
		return
	}
	// The address pays for the bytes stored, not for retried documents
	// nor the body's framing.
	s.cfg.AddressQuota.Refund(addr, max(size-float64(res.StoredBytes), 0))
	status := http.StatusCreated
	if res.Stored == 0 {
		w.Header().Set("Idempotent-Replayed", "true")
		status = http.StatusOK
	}
	writeJSON(w, status, map[string][]server.Receipt{"receipts": res.Receipts})
}

func (s *Server) inbox(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	q := r.URL.Query()
	since, err := queryUint(q.Get("since"), "since", 0)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryUint(q.Get("limit"), "limit", 100)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodGet,
		Path:     "/v1/inbox/" + handle,
		Bindings: []string{"since=" + strconv.FormatUint(since, 10)},
		Header:   r.Header.Get("X-KEZ-Auth"),
	}); !ok {
		return
	}
	envs, next, err := s.svc.Inbox(r.Context(), handle, since, int(min(max(limit, 1), 1000)))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writePage(w, envs, next)
}

// writePage answers an inbox page envelope by envelope, as
// {"messages":[...],"next":N}: a client that does not read holds up this
// handler, its socket buffers and one envelope, never a second copy of the
// page, and only until the response's write deadline.
func (s *Server) writePage(w http.ResponseWriter, envs []*server.Envelope, next uint64) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.ResponseWriteTimeout))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 0, 4<<10)
	buf = append(buf, `{"messages":[`...)
	for i, e := range envs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = e.AppendJSON(buf)
		envs[i] = nil // written: the page holds no more of it
		if len(buf) >= 4<<10 {
			if _, err := w.Write(buf); err != nil {
				return // the client went away, or its deadline passed
			}
			buf = buf[:0]
		}
	}
	buf = append(buf, `],"next":`...)
	buf = strconv.AppendUint(buf, next, 10)
	buf = append(buf, "}\n"...)
	_, _ = w.Write(buf)
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	raw := r.URL.Query().Get("upto")
	if raw == "" {
		s.fail(w, r, server.Errorf(server.CodeInvalidField, "upto is required"))
		return
	}
	upto, err := queryUint(raw, "upto", 0)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	sess, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodDelete,
		Path:     "/v1/inbox/" + handle,
		Bindings: []string{"upto=" + raw},
		Header:   r.Header.Get("X-KEZ-Auth"),
		Once:     true,
	})
	if !ok {
		return
	}
	n, err := s.svc.Ack(r.Context(), sess, upto)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

// bodyDigestBinding is the "sha256=<D>" line a request string binds its
// body with: every byte as sent.
func bodyDigestBinding(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha256=" + signing.EncodeB64(sum[:])
}

// authenticate verifies a request's auth, answering and returning false if
// it fails. The signature is checked first: a correctly signed request
// passes whatever failures were charged to its address or handle, so
// nobody can lock a person out by failing on their behalf, or by forging
// their address.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, a server.RequestAuth) (*server.Session, bool) {
	sess, err := s.svc.Authenticate(r.Context(), a)
	if err != nil {
		s.failAuth(w, r, a.Handle, err)
		return nil, false
	}
	return sess, true
}

// failAuth answers err and, if it is an authentication failure, charges it
// to the client's address and to the handle, each in a limiter of its own
// (a flood of one cannot evict the other's buckets). Past either limit the
// failure is answered 429 with Retry-After instead, which slows down
// guessing without ever refusing a correct signature.
func (s *Server) failAuth(w http.ResponseWriter, r *http.Request, handle string, err error) {
	if authFailure(server.ErrorCode(err)) {
		s.metrics.authFailures.Inc()
		okAddr, waitAddr := s.cfg.FailedAuthLimiter.Allow(s.clientAddr(r))
		okHandle, waitHandle := true, time.Duration(0)
		if handle != "" {
			okHandle, waitHandle = s.cfg.FailedAuthHandleLimiter.Allow(handle)
		}
		if !okAddr || !okHandle {
			err = &server.Error{Code: server.CodeRateLimited, Message: "too many failed authentications", RetryAfter: max(waitAddr, waitHandle)}
		}
	}
	s.fail(w, r, err)
}

// fail answers err, logging it first when it is not the client's fault.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if server.ErrorCode(err) == server.CodeInternal {
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, err)
}

// allow spends a token of limiter for key, answering 429 if there is none.
func (s *Server) allow(w http.ResponseWriter, limiter *server.RateLimiter, key string) bool {
	ok, wait := limiter.Allow(key)
	if !ok {
		s.metrics.rateLimited.Inc()
		writeError(w, &server.Error{Code: server.CodeRateLimited, Message: "too many requests from this address", RetryAfter: wait})
	}
	return ok
}

// bodies holds request body buffers for reuse: decoding copies everything
// it keeps (strings, json.RawMessage), so a body is not needed after it.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest body buffer kept for reuse.
const maxPooledBody = 16 << 10

// readJSON decodes a body of at most limit bytes strictly into v.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	return readBody(w, r, limit, func(body []byte) error { return server.DecodeJSON(body, v) })
}

// readBody reads a body of at most limit bytes and passes it to decode,
// which must not keep it.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, decode func([]byte) error) error {
	body := bodies.Get().(*bytes.Buffer)
	defer func() {
		if body.Cap() <= maxPooledBody {
			body.Reset()
			bodies.Put(body)
		}
	}()
	if r.ContentLength > 0 && r.ContentLength <= limit {
		body.Grow(int(r.ContentLength) + 1) // +1: ReadFrom wants room to see EOF
	}
	if _, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return server.Errorf(server.CodeBodyTooLarge, "the body is over %d bytes", limit)
		}
		return server.Errorf(server.CodeInvalidJSON, "reading the body: %v", err)
	}
	return decode(body.Bytes())
}

// queryUint parses a decimal query parameter, refusing signs, leading zeros
// and overflow so the value has exactly one spelling (auth strings bind it).
func queryUint(v, name string, def uint64) (uint64, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil || (len(v) > 1 && strings.HasPrefix(v, "0")) {
		return 0, server.Errorf(server.CodeInvalidField, "%s must be a decimal integer without sign or leading zeros", name)
	}
	return n, nil
}

// spendAddressQuota takes size bytes of the address's daily quota for
// what its request may store, answering 429 if there are not that many;
// the caller gives back what was not stored.
func (s *Server) spendAddressQuota(w http.ResponseWriter, r *http.Request, addr string, size float64) bool {
	ok, wait := s.cfg.AddressQuota.AllowN(addr, size)
	if !ok {
		s.metrics.rateLimited.Inc()
		s.fail(w, r, &server.Error{Code: server.CodeAddressQuota, RetryAfter: wait,
			Message: fmt.Sprintf("this address has stored its day's quota of message bytes; wait %s", wait.Round(time.Second))})
	}
	return ok
}
