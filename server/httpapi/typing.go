package httpapi

import (
	"net/http"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// maxTypingBody bounds a typing request: 256 recipients with 512 bytes of
// ct each fit.
const maxTypingBody = 64 << 10

// typing relays a typing indicator to the recipients' open streams.
func (s *Server) typing(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	var req server.TypingRequest
	var binding string
	err := readBody(w, r, maxTypingBody, func(body []byte) error {
		binding = bodyDigestBinding(body)
		return server.DecodeJSON(body, &req)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodPost,
		Path:     "/v1/typing/" + handle,
		Bindings: []string{binding},
		Header:   r.Header.Get("X-KEZ-Auth"),
		Once:     true,
	}); !ok {
		return
	}
	n, forwarded, err := s.svc.Typing(r.Context(), handle, &req)
	if err != nil {
		if server.ErrorCode(err) == server.CodeRateLimited {
			s.metrics.rateLimited.Inc()
		}
		s.fail(w, r, err)
		return
	}
	answer := map[string]int{"recipients": n}
	if len(req.Remote) > 0 {
		answer["servers"] = forwarded
	}
	writeJSON(w, http.StatusAccepted, answer)
}

// receiveTyping relays a typing document another server forwards
// (POST /v1/federation/typing); the Service verifies its signature.
func (s *Server) receiveTyping(w http.ResponseWriter, r *http.Request) {
	if !s.allow(w, s.cfg.SendLimiter, s.clientAddr(r)) {
		return
	}
	var doc signing.Signed
	if err := readBody(w, r, maxTypingBody, func(body []byte) error { return server.DecodeSigned(body, &doc) }); err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.svc.ReceiveTyping(r.Context(), doc)
	if err != nil {
		if server.ErrorCode(err) == server.CodeRateLimited {
			s.metrics.rateLimited.Inc()
		}
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]int{"recipients": n})
}
