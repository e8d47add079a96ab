package httpapi

import (
	"net/http"

	"kez.lat/chat/server"
)

// maxPushBody bounds a PushSubscription document; real ones are a few
// hundred bytes.
const maxPushBody = 4 << 10

func (s *Server) vapidPublicKey(w http.ResponseWriter, r *http.Request) {
	if !s.svc.PushEnabled() {
		s.fail(w, r, server.Errorf(server.CodePushDisabled, "this server does not send Web Push"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"public_key": s.cfg.VAPIDPublicKey})
}

func (s *Server) pushSubscribe(w http.ResponseWriter, r *http.Request) {
	handle, sub, ok := s.pushRequest(w, r, "/v1/push/subscribe/")
	if !ok {
		return
	}
	if err := s.svc.SubscribePush(r.Context(), handle, sub); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"handle": handle, "endpoint": sub.Endpoint})
}

func (s *Server) pushUnsubscribe(w http.ResponseWriter, r *http.Request) {
	handle, sub, ok := s.pushRequest(w, r, "/v1/push/unsubscribe/")
	if !ok {
		return
	}
	if err := s.svc.UnsubscribePush(r.Context(), handle, sub.Endpoint); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"handle": handle, "endpoint": sub.Endpoint})
}

// pushRequest decodes a (un)subscribe body and authenticates it: the auth
// string binds the endpoint, so a captured header cannot (un)subscribe
// another one, and is accepted once.
func (s *Server) pushRequest(w http.ResponseWriter, r *http.Request, prefix string) (string, server.PushSubscriptionJSON, bool) {
	handle := r.PathValue("handle")
	var sub server.PushSubscriptionJSON
	if !s.svc.PushEnabled() {
		s.fail(w, r, server.Errorf(server.CodePushDisabled, "this server does not send Web Push"))
		return "", sub, false
	}
	if err := readJSON(w, r, maxPushBody, &sub); err != nil {
		s.fail(w, r, err)
		return "", sub, false
	}
	_, ok := s.authenticate(w, r, server.RequestAuth{
		Handle:   handle,
		Method:   http.MethodPost,
		Path:     prefix + handle,
		Bindings: []string{"endpoint=" + sub.Endpoint},
		Header:   r.Header.Get("X-KEZ-Auth"),
		Once:     true,
	})
	return handle, sub, ok
}
