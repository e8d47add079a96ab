package httpapi

import (
	"net/http"

	"kez.lat/chat/server"
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
	n, err := s.svc.Typing(r.Context(), handle, &req)
	if err != nil {
		if server.ErrorCode(err) == server.CodeRateLimited {
			s.metrics.rateLimited.Inc()
		}
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]int{"recipients": n})
}
