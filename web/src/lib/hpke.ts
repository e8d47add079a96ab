// The HPKE suite of message encryption, loaded with the first message sealed
// or opened (crypto.ts): the conversation list and the history show without it.

import { CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import { Chacha20Poly1305 } from '@hpke/chacha20poly1305';

export type { CipherSuite };

/** The suite with WebCrypto's X25519 (native) or @noble/curves' (loaded only then). */
export async function makeSuite(native: boolean): Promise<CipherSuite> {
  const kem = native ? new DhkemX25519HkdfSha256() : new (await import('@hpke/dhkem-x25519')).DhkemX25519HkdfSha256();
  return new CipherSuite({ kem, kdf: new HkdfSha256(), aead: new Chacha20Poly1305() });
}
