// Package client is the Go client of the KEZ chat protocol (docs/protocol.md):
// identities and their key file, registration and lookup, end-to-end
// encrypted messages (HPKE to the recipient's X25519 key, signed by the
// sender), inbox polling, acknowledgement and the live inbox stream.
//
// A Client talks to one server, its identity's. People on other servers
// are named by address, handle@domain (Address, Client.Name): the Client
// looks them up at their own domain (WebFinger, their record, their key
// document chain), checks and pins them as it does its server's people,
// and sends to them through its own server, which relays (docs/protocol.md,
// "Federation"). Every call takes a context; non-stream calls are also
// bounded by the http.Client's timeout, and every response body is read
// through a size limit.
//
// The server never sees plaintext: Send encrypts and signs on this side, and
// Decrypt verifies the sender's signature against the sender's registered
// key before it opens the ciphertext.
package client
