// Package signing holds the KEZ chat protocol's signing primitives: RFC 8785
// JSON canonicalization, the signature suites (ed25519 and bip340), primary
// ids, signed JSON documents and the strings signed for request auth.
//
// It is shared by the server, the Go client and tests, so every byte layout
// here is part of the wire protocol: changing one breaks existing signatures.
package signing
