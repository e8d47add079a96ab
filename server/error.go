package server

import (
	"errors"
	"fmt"
	"time"
)

// Stable error codes. Clients switch on these; docs/protocol.md lists them
// with their HTTP status. Never rename one.
const (
	// Request shape.
	CodeInvalidJSON      = "invalid_json"
	CodeUnknownField     = "unknown_field"
	CodeInvalidField     = "invalid_field"
	CodeInvalidEncoding  = "invalid_encoding"
	CodeBodyTooLarge     = "body_too_large"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"

	// Signed payloads.
	CodeBadSignature   = "bad_signature"
	CodeUnknownAlg     = "unknown_alg"
	CodeWrongType      = "wrong_type"
	CodeWrongServer    = "wrong_server"
	CodeStaleTimestamp = "stale_timestamp"

	// Request authentication (X-KEZ-Auth and the stream's auth parameter).
	CodeMissingAuth  = "missing_auth"
	CodeBadAuth      = "bad_auth"
	CodeStaleAuth    = "stale_auth"
	CodeReplayedAuth = "replayed_auth"

	// Registration and lookup.
	CodeInvalidHandle     = "invalid_handle"
	CodeReservedHandle    = "reserved_handle"
	CodePrimaryIDMismatch = "primary_id_mismatch"
	CodeHandleTaken       = "handle_taken"
	CodePrimaryIDTaken    = "primary_id_taken"
	CodeUnknownHandle     = "unknown_handle"
	CodeInvalidResource   = "invalid_resource"

	// Messages.
	CodeUnknownSender      = "unknown_sender"
	CodeUnknownRecipient   = "unknown_recipient"
	CodeKeyNotAuthorized   = "key_not_authorized"
	CodeInvalidMessageID   = "invalid_message_id"
	CodeMessageIDConflict  = "message_id_conflict"
	CodeCiphertextTooLarge = "ciphertext_too_large"
	CodeInboxFull          = "inbox_full"
	// CodeSenderQuota and CodeAddressQuota: the bytes one sending handle,
	// or one client address, may have stored per day are spent.
	CodeSenderQuota  = "sender_quota_exceeded"
	CodeAddressQuota = "address_quota_exceeded"

	// Attachment blobs.
	CodeBlobTooLarge   = "blob_too_large"
	CodeDigestMismatch = "digest_mismatch"
	CodeUnknownBlob    = "unknown_blob"

	// Key documents (the sig-server).
	CodeNotPrimaryKey     = "not_primary_key"
	CodePrimaryKeyMissing = "primary_key_missing"
	CodeVersionGap        = "version_gap"
	CodeWrongPrev         = "wrong_prev"
	CodeVersionTaken      = "version_taken"
	CodeUnknownIdentity   = "unknown_identity"

	// Device linking: the short-lived mailboxes of POST /v1/link.
	CodeLinkExists   = "link_exists"
	CodeLinkUsed     = "link_used"
	CodeUnknownLink  = "unknown_link"
	CodeTooManyLinks = "too_many_links"

	// Web Push.
	CodePushDisabled       = "push_disabled"
	CodeEndpointNotAllowed = "endpoint_not_allowed"

	// Abuse limits and availability.
	CodeRateLimited    = "rate_limited"
	CodeTooManyStreams = "too_many_streams"
	CodeUnavailable    = "unavailable"
	// CodeStorageFull: the server's disk (or its store's size limit) has
	// no room for the write; it recovers once room returns.
	CodeStorageFull = "storage_full"
	CodeInternal    = "internal"

	// Federation (docs/protocol.md, "Federation").
	CodeFederationDisabled = "federation_disabled"
	CodeDomainBlocked      = "domain_blocked"
	CodeSenderBlocked      = "sender_blocked"
	CodeStrangerRefused    = "stranger_refused"
	CodeSenderKeyChanged   = "sender_key_changed"
	CodeDomainQuota        = "domain_quota_exceeded"
	CodeOutboxFull         = "outbox_full"
)

// Error is a failure the client can act on: a stable code and a message for
// people. Anything that is not an *Error is an internal failure.
type Error struct {
	Code    string
	Message string
	// RetryAfter is set where waiting helps: rate limits and quotas.
	RetryAfter time.Duration
	// Index, when set, is the position in a group send of the document
	// the refusal is about.
	Index *int
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// AtIndex returns err as a refusal about the document at index i of a
// group send: a copy of its *Error with Index set. Any other error is
// returned as it is (an internal failure is about no document).
func AtIndex(err error, i int) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	c := *e
	c.Index = &i
	return &c
}

// ErrorCode returns the code of err's *Error, or CodeInternal when err is
// not one.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrSlowConsumer ends a stream whose reader fell too far behind; the client
// resumes from its cursor.
var ErrSlowConsumer = errors.New("stream reader too slow; resume from the last seq")
