package httpapi

import (
	"net/http"

	"kez.lat/chat/server"
)

// receiveFederated takes the documents another server relays for one of
// its people (POST /v1/federation/messages). There is no auth header:
// the Service verifies every document against the keys the sender's own
// domain publishes. The relaying server's address pays the per-address
// send limit and byte quota like any client's.
func (s *Server) receiveFederated(w http.ResponseWriter, r *http.Request) {
	addr := s.clientAddr(r)
	if !s.allow(w, s.cfg.SendLimiter, addr) {
		return
	}
	var body server.BatchBody
	var size float64
	err := readBody(w, r, maxBatchBody, func(b []byte) error {
		size = float64(len(b))
		return server.DecodeJSON(b, &body)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.spendAddressQuota(w, r, addr, size) {
		return
	}
	res, err := s.svc.ReceiveFederated(r.Context(), body.Messages)
	if err != nil {
		s.cfg.AddressQuota.Refund(addr, size)
		s.fail(w, r, err)
		return
	}
	s.cfg.AddressQuota.Refund(addr, max(size-float64(res.StoredBytes), 0))
	status := http.StatusCreated
	if res.Stored == 0 {
		w.Header().Set("Idempotent-Replayed", "true")
		status = http.StatusOK
	}
	writeJSON(w, status, map[string][]server.Receipt{"receipts": res.Receipts})
}

// outbox lists what the handle queued for other servers.
func (s *Server) outbox(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	sess, ok := s.authenticate(w, r, server.RequestAuth{
		Handle: handle, Method: http.MethodGet, Path: "/v1/outbox/" + handle, Header: r.Header.Get("X-KEZ-Auth"),
	})
	if !ok {
		return
	}
	entries, err := s.svc.Outbox(r.Context(), sess)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string][]*server.OutboxEntry{"entries": entries})
}

// privacy answers the handle's setting of who may write from elsewhere.
func (s *Server) privacy(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	sess, ok := s.authenticate(w, r, server.RequestAuth{
		Handle: handle, Method: http.MethodGet, Path: "/v1/privacy/" + handle, Header: r.Header.Get("X-KEZ-Auth"),
	})
	if !ok {
		return
	}
	p, err := s.svc.Privacy(r.Context(), sess)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, p)
}

// setPrivacy replaces the handle's setting; the auth binds the body and
// is accepted once.
func (s *Server) setPrivacy(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	var p server.Privacy
	var sess *server.Session
	err := readBody(w, r, server.MaxPrivacyBody, func(b []byte) error {
		var err error
		sess, err = s.svc.Authenticate(r.Context(), server.RequestAuth{
			Handle: handle, Method: http.MethodPut, Path: "/v1/privacy/" + handle,
			Bindings: []string{bodyDigestBinding(b)}, Header: r.Header.Get("X-KEZ-Auth"), Once: true,
		})
		if err != nil {
			return err
		}
		return server.DecodeJSON(b, &p)
	})
	if err != nil {
		s.failAuth(w, r, handle, err)
		return
	}
	stored, err := s.svc.SetPrivacy(r.Context(), sess, p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stored)
}
