package signing

import (
	"encoding/json"
	"fmt"
)

// Signature is the "signature" member of a signed document. Key and Sig are
// base64url without padding.
type Signature struct {
	Alg string `json:"alg"`
	Key string `json:"key"`
	Sig string `json:"sig"`
}

// Signed is a signed JSON document:
//
//	{"payload": {...}, "signature": {"alg": ..., "key": ..., "sig": ...}}
//
// The signed bytes are Canonicalize(payload). Payload must be a JSON object.
type Signed struct {
	Payload   json.RawMessage `json:"payload"`
	Signature Signature       `json:"signature"`
}

// Sign marshals payload with encoding/json and signs its canonical form. The
// returned Payload holds the canonical bytes. encoding/json output is not
// canonical (it escapes <, > and &, keeps struct field order), hence the
// extra step.
func Sign(s Signer, payload any) (Signed, error) {
	raw, err := json.Marshal(payload)
	if err != nil {
		return Signed{}, fmt.Errorf("signing: marshalling payload: %w", err)
	}
	canonical, err := canonicalPayload(raw)
	if err != nil {
		return Signed{}, fmt.Errorf("signing: %w", err)
	}
	sig, err := s.Sign(canonical)
	if err != nil {
		return Signed{}, fmt.Errorf("signing payload with %s: %w", s.Alg(), err)
	}
	return Signed{
		Payload: canonical,
		Signature: Signature{
			Alg: s.Alg(),
			Key: EncodeB64(s.PublicKey()),
			Sig: EncodeB64(sig),
		},
	}, nil
}

// Verify checks the signature over the canonical form of s.Payload and returns
// those canonical bytes and the raw public key. The payload is always
// re-canonicalized, since encoding/json re-escapes a RawMessage when the
// document is marshalled. Errors wrap ErrMalformed (bad base64, payload not a
// canonicalizable JSON object), ErrUnknownAlg, ErrBadKey or ErrBadSignature.
func (s Signed) Verify() (canonical []byte, pub []byte, err error) {
	canonical, err = canonicalPayload(s.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying signed document: %w", err)
	}
	pub, err = DecodeB64(s.Signature.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying signed document: %w: key: %w", ErrMalformed, err)
	}
	sig, err := DecodeB64(s.Signature.Sig)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying signed document: %w: sig: %w", ErrMalformed, err)
	}
	if err := Verify(s.Signature.Alg, pub, canonical, sig); err != nil {
		return nil, nil, fmt.Errorf("verifying signed document: %w", err)
	}
	return canonical, pub, nil
}

// canonicalPayload canonicalizes a payload and requires it to be an object.
func canonicalPayload(payload []byte) ([]byte, error) {
	canonical, err := Canonicalize(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	if canonical[0] != '{' {
		return nil, fmt.Errorf("%w: payload is not a JSON object", ErrMalformed)
	}
	return canonical, nil
}
