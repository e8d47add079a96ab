package signing

import "errors"

// Sentinel errors. Returned errors wrap one of these with detail, so callers
// test with errors.Is and never by message.
var (
	ErrUnknownAlg   = errors.New("unknown signature algorithm")
	ErrBadKey       = errors.New("malformed public key")
	ErrBadSignature = errors.New("signature does not verify")
	ErrMalformed    = errors.New("malformed signed document")
)
