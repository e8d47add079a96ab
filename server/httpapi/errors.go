package httpapi

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"

	"kez.lat/chat/server"
)

// statusOf maps every stable error code to its HTTP status
// (docs/protocol.md, "Error codes").
var statusOf = map[string]int{
	server.CodeInvalidJSON:        http.StatusBadRequest,
	server.CodeUnknownField:       http.StatusBadRequest,
	server.CodeInvalidField:       http.StatusBadRequest,
	server.CodeInvalidEncoding:    http.StatusBadRequest,
	server.CodeBodyTooLarge:       http.StatusRequestEntityTooLarge,
	server.CodeNotFound:           http.StatusNotFound,
	server.CodeMethodNotAllowed:   http.StatusMethodNotAllowed,
	server.CodeBadSignature:       http.StatusUnauthorized,
	server.CodeUnknownAlg:         http.StatusBadRequest,
	server.CodeWrongType:          http.StatusBadRequest,
	server.CodeWrongServer:        http.StatusBadRequest,
	server.CodeStaleTimestamp:     http.StatusBadRequest,
	server.CodeMissingAuth:        http.StatusBadRequest,
	server.CodeBadAuth:            http.StatusUnauthorized,
	server.CodeStaleAuth:          http.StatusUnauthorized,
	server.CodeReplayedAuth:       http.StatusUnauthorized,
	server.CodeInvalidHandle:      http.StatusBadRequest,
	server.CodeReservedHandle:     http.StatusBadRequest,
	server.CodePrimaryIDMismatch:  http.StatusBadRequest,
	server.CodeHandleTaken:        http.StatusConflict,
	server.CodePrimaryIDTaken:     http.StatusConflict,
	server.CodeUnknownHandle:      http.StatusNotFound,
	server.CodeInvalidResource:    http.StatusBadRequest,
	server.CodeUnknownSender:      http.StatusForbidden,
	server.CodeKeyNotAuthorized:   http.StatusForbidden,
	server.CodeUnknownRecipient:   http.StatusNotFound,
	server.CodeInvalidMessageID:   http.StatusBadRequest,
	server.CodeMessageIDConflict:  http.StatusConflict,
	server.CodeCiphertextTooLarge: http.StatusRequestEntityTooLarge,
	server.CodeInboxFull:          http.StatusConflict,
	server.CodeSenderQuota:        http.StatusTooManyRequests,
	server.CodeAddressQuota:       http.StatusTooManyRequests,
	server.CodeBlobTooLarge:       http.StatusRequestEntityTooLarge,
	server.CodeDigestMismatch:     http.StatusBadRequest,
	server.CodeUnknownBlob:        http.StatusNotFound,
	server.CodeNotPrimaryKey:      http.StatusForbidden,
	server.CodePrimaryKeyMissing:  http.StatusBadRequest,
	server.CodeVersionGap:         http.StatusConflict,
	server.CodeWrongPrev:          http.StatusConflict,
	server.CodeVersionTaken:       http.StatusConflict,
	server.CodeUnknownIdentity:    http.StatusNotFound,
	server.CodeLinkExists:         http.StatusConflict,
	server.CodeLinkUsed:           http.StatusConflict,
	server.CodeUnknownLink:        http.StatusNotFound,
	server.CodeTooManyLinks:       http.StatusTooManyRequests,
	server.CodePushDisabled:       http.StatusNotFound,
	server.CodeEndpointNotAllowed: http.StatusBadRequest,
	server.CodeRateLimited:        http.StatusTooManyRequests,
	server.CodeTooManyStreams:     http.StatusTooManyRequests,
	server.CodeUnavailable:        http.StatusServiceUnavailable,
	server.CodeStorageFull:        http.StatusInsufficientStorage,
	server.CodeInternal:           http.StatusInternalServerError,
	server.CodeFederationDisabled: http.StatusForbidden,
	server.CodeDomainBlocked:      http.StatusForbidden,
	server.CodeSenderBlocked:      http.StatusForbidden,
	server.CodeStrangerRefused:    http.StatusForbidden,
	server.CodeSenderKeyChanged:   http.StatusConflict,
	server.CodeDomainQuota:        http.StatusTooManyRequests,
	server.CodeOutboxFull:         http.StatusConflict,
}

// authFailure reports whether code means a request failed to prove who sent
// it, which counts against the failed-auth limits.
func authFailure(code string) bool {
	switch code {
	case server.CodeBadAuth, server.CodeStaleAuth, server.CodeReplayedAuth, server.CodeBadSignature, server.CodeKeyNotAuthorized:
		return true
	}
	return false
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		// Index names the document of a group send the error is about.
		Index *int `json:"index,omitempty"`
	} `json:"error"`
}

// writeError answers err as {"error":{"code","message"}}. Errors that are
// not *server.Error are internal: their text stays in the log, never in the
// response.
func writeError(w http.ResponseWriter, err error) {
	var e *server.Error
	if !errors.As(err, &e) {
		e = server.Errorf(server.CodeInternal, "internal error")
	}
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	var body errorBody
	body.Error.Code, body.Error.Message, body.Error.Index = e.Code, e.Message, e.Index
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	writeBody(w, v)
}

// writeBody writes v as JSON without Go's HTML escaping.
func writeBody(w http.ResponseWriter, v any) {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing left to tell it
}
