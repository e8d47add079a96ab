// Package server holds the chat server's domain: the types every part of the
// server shares (users, envelopes, errors, rate limits), the interfaces
// between the parts (Store, Broker, Pusher, KeyResolver, ...), and Service,
// which enforces the protocol rules of docs/protocol.md; KeyDirectory does
// the same for the sig-server. Each dependency lives in its own subpackage
// (sqlite, jsstore, membus, natsbus, push, sigclient, httpapi, ...), and
// server/app puts them together.
//
// The server only ever handles ciphertext: it verifies signatures, orders and
// stores opaque envelopes, and relays them.
package server

import "time"

// Protocol payload types. A signature over one type is never accepted as another.
const (
	TypeRegister = "kez.chat.register/v1"
	TypeMessage  = "kez.chat.message/v1"
	// TypeTyping is a typing indicator for people on another server.
	TypeTyping = "kez.chat.typing/v1"
)

// Limits fixed by the protocol.
const (
	// MaxCiphertext is the largest decoded ct of a message.
	MaxCiphertext = 64 << 10
	// ClockSkew is how far a signed timestamp may be from the server's clock,
	// either way.
	ClockSkew = 5 * time.Minute
)

// DefaultPageBytes is the default of Config.MaxPageBytes: an inbox page or
// a stream's catch-up read holds about 1 MiB of messages at most.
const DefaultPageBytes = 1 << 20
