package httpapi

import (
	"net/http"
	"strings"

	"kez.lat/chat/server"
)

// RelKeys is the WebFinger link relation of a handle's latest key document
// on the sig-server.
const RelKeys = "https://kez.lat/rel/keys"

type jrd struct {
	Subject string    `json:"subject"`
	Links   []jrdLink `json:"links"`
}

type jrdLink struct {
	Rel  string `json:"rel"`
	Type string `json:"type"`
	Href string `json:"href"`
}

// webfinger answers RFC 7033 lookups of acct:handle@server.
func (s *Server) webfinger(w http.ResponseWriter, r *http.Request) {
	// RFC 7033 §5, and before any answer: a web app of another server
	// reads a refusal's code too (unknown_handle).
	w.Header().Set("Access-Control-Allow-Origin", "*")
	resource := r.URL.Query().Get("resource")
	acct, ok := strings.CutPrefix(resource, "acct:")
	handle, domain, ok2 := strings.Cut(acct, "@")
	if !ok || !ok2 || handle == "" || domain == "" || strings.Contains(domain, "@") {
		s.fail(w, r, server.Errorf(server.CodeInvalidResource, "resource must be acct:<handle>@<server>"))
		return
	}
	if !strings.EqualFold(domain, s.svc.Domain()) {
		s.fail(w, r, server.Errorf(server.CodeUnknownHandle, "%s is not served here", domain))
		return
	}
	u, err := s.svc.User(r.Context(), handle)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	links := []jrdLink{{
		Rel:  "self",
		Type: "application/json",
		Href: strings.TrimSuffix(s.cfg.PublicURL, "/") + "/v1/u/" + u.Handle,
	}}
	if s.cfg.SigServerURL != "" {
		links = append(links, jrdLink{
			Rel:  RelKeys,
			Type: "application/json",
			Href: strings.TrimSuffix(s.cfg.SigServerURL, "/") + "/v1/keys/" + u.PrimaryID,
		})
	}
	w.Header().Set("Content-Type", "application/jrd+json")
	w.WriteHeader(http.StatusOK)
	writeBody(w, jrd{Subject: "acct:" + u.Handle + "@" + u.Server, Links: links})
}
