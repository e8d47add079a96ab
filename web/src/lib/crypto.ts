// Message encryption (docs/protocol.md, "Message encryption"): HPKE base
// mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
// info "kez-chat/v1 message", no aad; ct = enc (32 bytes) || ciphertext.

import { webCryptoHas } from './backend';
import type { CipherSuite } from './hpke';
import { concat, decodeB64, encodeB64, utf8 } from './bytes';

const INFO = utf8('kez-chat/v1 message');
const ENC_SIZE = 32;

/**
 * An X25519 key pair. As kept, the private key is a non-extractable
 * WebCrypto key where the browser has X25519; the raw private key is
 * there only while a key is made, imported or exported, or where the
 * browser lacks X25519.
 */
export interface EncKeyPair {
  publicKey: Uint8Array<ArrayBuffer>;
  secret?: Uint8Array<ArrayBuffer>;
  cryptoKey?: CryptoKey;
}

/** The pair as kept: a non-extractable WebCrypto key and no raw private key, where the browser has X25519. */
export async function nonExtractableEncKey(pair: EncKeyPair): Promise<EncKeyPair> {
  if (pair.cryptoKey || !pair.secret || !(await webCryptoHas('X25519'))) return pair;
  const jwk: JsonWebKey = { kty: 'OKP', crv: 'X25519', d: encodeB64(pair.secret), x: encodeB64(pair.publicKey) };
  const cryptoKey = await crypto.subtle.importKey('jwk', jwk, { name: 'X25519' }, false, ['deriveBits']);
  return { publicKey: pair.publicKey, cryptoKey };
}

let suites: { native?: Promise<CipherSuite>; noble?: Promise<CipherSuite> } = {};

async function suite(native = false): Promise<CipherSuite> {
  // HPKE loads with the first message sealed or opened, not with the page.
  if (native || (await webCryptoHas('X25519'))) {
    suites.native ??= import('./hpke').then((m) => m.makeSuite(true));
    return suites.native;
  }
  suites.noble ??= import('./hpke').then((m) => m.makeSuite(false));
  return suites.noble;
}

/** Forgets the suites (tests switch backends). */
export function resetSuites(): void {
  suites = {};
}

export async function generateEncKeyPair(): Promise<EncKeyPair> {
  if (await webCryptoHas('X25519')) {
    const pair = (await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits'])) as CryptoKeyPair;
    const jwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    return { secret: decodeB64(jwk.d!), publicKey: decodeB64(jwk.x!) };
  }
  const { x25519 } = await import('@noble/curves/ed25519.js');
  const secret = x25519.utils.randomSecretKey();
  return { secret: new Uint8Array(secret), publicKey: new Uint8Array(x25519.getPublicKey(secret)) };
}

/** The public key of a raw X25519 private key (to check an imported identity). */
export async function x25519PublicKey(secret: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const { x25519 } = await import('@noble/curves/ed25519.js');
  return new Uint8Array(x25519.getPublicKey(secret));
}

export function seal(recipientPublicKey: Uint8Array<ArrayBuffer>, plaintext: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  return sealInfo(recipientPublicKey, plaintext, INFO);
}

export function open(recipient: EncKeyPair, ct: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  return openInfo(recipient, ct, INFO);
}

/** The same HPKE under another info (typing indicators, device links). */
export const sealWithInfo = (pk: Uint8Array<ArrayBuffer>, plaintext: Uint8Array<ArrayBuffer>, info: string) => sealInfo(pk, plaintext, utf8(info));
export const openWithInfo = (recipient: EncKeyPair, ct: Uint8Array<ArrayBuffer>, info: string) => openInfo(recipient, ct, utf8(info));

async function sealInfo(recipientPublicKey: Uint8Array<ArrayBuffer>, plaintext: Uint8Array<ArrayBuffer>, info: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  const s = await suite();
  const pk = await s.kem.deserializePublicKey(recipientPublicKey);
  const { ct, enc } = await s.seal({ recipientPublicKey: pk, info }, plaintext);
  return concat(new Uint8Array(enc), new Uint8Array(ct));
}

async function openInfo(recipient: EncKeyPair, ct: Uint8Array<ArrayBuffer>, info: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  if (ct.length < ENC_SIZE) throw new Error('ciphertext shorter than the encapsulated key');
  let s: CipherSuite;
  let recipientKey: CryptoKey | CryptoKeyPair;
  if (recipient.cryptoKey) {
    // A non-extractable key: the KEM cannot derive its public key, so it is given.
    s = await suite(true);
    recipientKey = { privateKey: recipient.cryptoKey, publicKey: await s.kem.deserializePublicKey(recipient.publicKey) };
  } else if (recipient.secret) {
    s = await suite();
    recipientKey = await s.kem.deserializePrivateKey(recipient.secret);
  } else {
    throw new Error('this key pair holds neither a WebCrypto key nor a private key');
  }
  const pt = await s.open({ recipientKey, enc: ct.slice(0, ENC_SIZE), info }, ct.slice(ENC_SIZE));
  return new Uint8Array(pt);
}
