package httpapi

import (
	"context"
	"net/http"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// openLink opens a link channel for the signing handle.
func (s *Server) openLink(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	channel := r.URL.Query().Get("channel")
	if err := server.CheckLinkChannel(channel); err != nil {
		s.fail(w, r, err)
		return
	}
	if _, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodPost,
		Path:     "/v1/link/" + handle,
		Bindings: []string{"channel=" + channel},
		Header:   r.Header.Get("X-KEZ-Auth"),
		Once:     true,
	}); !ok {
		return
	}
	l, err := s.svc.OpenLink(r.Context(), handle, channel)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"channel": l.Channel, "expires": l.Expires.Unix()})
}

// writeLink writes a slot of a link channel, once. The request slot needs
// no auth (the channel is the capability); the response slot is signed by
// the handle that opened the channel.
func (s *Server) writeLink(w http.ResponseWriter, r *http.Request) {
	channel := r.PathValue("channel")
	slot, ok := server.ParseLinkSlot(r.PathValue("slot"))
	if !ok {
		s.fail(w, r, server.Errorf(server.CodeNotFound, "no route %s", r.URL.Path))
		return
	}
	if err := server.CheckLinkChannel(channel); err != nil {
		s.fail(w, r, err)
		return
	}
	// The body's base64url holds at most the slot's bytes, in 4/3 as many
	// characters, plus the JSON around it.
	limit := int64(server.MaxLinkRequest)
	if slot == server.LinkResponse {
		limit = server.MaxLinkResponse
	}
	var body server.LinkData
	var binding string
	err := readBody(w, r, limit*4/3+64, func(b []byte) error {
		binding = bodyDigestBinding(b)
		return server.DecodeJSON(b, &body)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if slot == server.LinkResponse && !s.authenticateLinkOpener(w, r, channel, binding) {
		return
	}
	if err := s.svc.WriteLink(r.Context(), channel, slot, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// authenticateLinkOpener checks the response slot's auth against the
// handle that opened channel: the signed string names that handle, so a
// signature by anyone else does not verify, and is key_not_authorized.
func (s *Server) authenticateLinkOpener(w http.ResponseWriter, r *http.Request, channel, binding string) bool {
	l, err := s.svc.Link(r.Context(), channel)
	if err != nil {
		s.fail(w, r, err)
		return false
	}
	header := r.Header.Get("X-KEZ-Auth")
	if header != "" {
		if _, _, err := signing.ParseAuth(header); err != nil {
			s.failAuth(w, r, l.Handle, server.Errorf(server.CodeBadAuth, "malformed auth: expected <ts>:<base64url signature>"))
			return false
		}
	}
	_, err = s.svc.Authenticate(r.Context(), server.RequestAuth{
		Handle:   l.Handle,
		Method:   http.MethodPut,
		Path:     "/v1/link/" + channel + "/response",
		Bindings: []string{"handle=" + l.Handle, binding},
		Header:   header,
		Once:     true,
	})
	if server.ErrorCode(err) == server.CodeBadAuth {
		err = server.Errorf(server.CodeKeyNotAuthorized, "the response slot is written by the handle that opened the channel")
	}
	if err != nil {
		s.failAuth(w, r, l.Handle, err)
		return false
	}
	return true
}

// readLink answers a slot's data, or 204 while it is not written; with
// ?wait=N it holds the request up to N seconds for a write.
func (s *Server) readLink(w http.ResponseWriter, r *http.Request) {
	channel := r.PathValue("channel")
	slot, ok := server.ParseLinkSlot(r.PathValue("slot"))
	if !ok {
		s.fail(w, r, server.Errorf(server.CodeNotFound, "no route %s", r.URL.Path))
		return
	}
	wait, err := queryUint(r.URL.Query().Get("wait"), "wait", 0)
	if err == nil && r.URL.Query().Has("wait") && (wait < 1 || wait > uint64(server.MaxLinkWait/time.Second)) {
		err = server.Errorf(server.CodeInvalidField, "wait must be 1 to %d seconds", int(server.MaxLinkWait/time.Second))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// A waiting read ends when the server shuts down, as a stream does:
	// the client asks again, of this replica or another.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.shutdown, cancel)
	defer stop()
	data, err := s.svc.ReadLink(ctx, channel, slot, time.Duration(wait)*time.Second)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if data == nil {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, server.LinkData{Data: signing.EncodeB64(data)})
}
