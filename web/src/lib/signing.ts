// Signature suites, primary_id and request auth (docs/protocol.md, "Signature
// suites", "primary_id", "Request auth").

import { webCryptoHas } from './backend';
import { concat, decodeB64, encodeB64, equalBytes, sha256, toHex, utf8 } from './bytes';
import { canonicalize } from './jcs';

export type Alg = 'ed25519' | 'bip340';

/**
 * A key that signs: the web client makes Ed25519 identities only. A kept
 * key holds a non-extractable WebCrypto key where the browser has Ed25519
 * (page code can sign with it but never read it); the 32-byte seed is
 * there only while a key is made, imported or exported, or where the
 * browser lacks Ed25519 (then @noble/curves signs with it).
 */
export interface SigningKey {
  alg: 'ed25519';
  publicKey: Uint8Array<ArrayBuffer>;
  secret?: Uint8Array<ArrayBuffer>;
  cryptoKey?: CryptoKey;
}

export interface Signature {
  alg: string;
  key: string;
  sig: string;
}

export interface Signed<P = Record<string, unknown>> {
  payload: P;
  signature: Signature;
}

const noble = () => import('@noble/curves/ed25519.js');
const nobleSecp = () => import('@noble/curves/secp256k1.js');

function ed25519Jwk(key: SigningKey & { secret: Uint8Array }): JsonWebKey {
  return { kty: 'OKP', crv: 'Ed25519', d: encodeB64(key.secret), x: encodeB64(key.publicKey) };
}

/** The key as kept: a non-extractable WebCrypto key and no seed, where the browser has Ed25519. */
export async function nonExtractableSigningKey(key: SigningKey): Promise<SigningKey> {
  if (key.cryptoKey || !key.secret || !(await webCryptoHas('Ed25519'))) return key;
  const cryptoKey = await crypto.subtle.importKey('jwk', ed25519Jwk({ ...key, secret: key.secret }), { name: 'Ed25519' }, false, ['sign']);
  return { alg: key.alg, publicKey: key.publicKey, cryptoKey };
}

const importedKeys = new WeakMap<SigningKey, Promise<CryptoKey>>();

export async function generateSigningKey(): Promise<SigningKey> {
  if (await webCryptoHas('Ed25519')) {
    const pair = (await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const jwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    return { alg: 'ed25519', secret: decodeB64(jwk.d!), publicKey: decodeB64(jwk.x!) };
  }
  const { ed25519 } = await noble();
  const secret = ed25519.utils.randomSecretKey();
  return { alg: 'ed25519', secret: new Uint8Array(secret), publicKey: new Uint8Array(ed25519.getPublicKey(secret)) };
}

/** The public key of an Ed25519 seed (to check an imported identity). */
export async function ed25519PublicKey(secret: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const { ed25519 } = await noble();
  return new Uint8Array(ed25519.getPublicKey(secret));
}

export async function sign(key: SigningKey, msg: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  if (key.cryptoKey) return new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key.cryptoKey, msg));
  const secret = key.secret;
  if (!secret) throw new Error('this signing key holds neither a WebCrypto key nor a seed');
  if (await webCryptoHas('Ed25519')) {
    let k = importedKeys.get(key);
    if (!k) {
      k = crypto.subtle.importKey('jwk', ed25519Jwk({ ...key, secret }), { name: 'Ed25519' }, false, ['sign']);
      importedKeys.set(key, k);
    }
    return new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, await k, msg));
  }
  const { ed25519 } = await noble();
  return new Uint8Array(ed25519.sign(msg, secret));
}

/** Verifies sig over msg under the suite alg; false for any failure. */
export async function verify(alg: string, pub: Uint8Array<ArrayBuffer>, msg: Uint8Array<ArrayBuffer>, sig: Uint8Array<ArrayBuffer>): Promise<boolean> {
  if (pub.length !== 32 || sig.length !== 64) return false;
  try {
    if (alg === 'ed25519') {
      if (await webCryptoHas('Ed25519')) {
        const k = await crypto.subtle.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify']);
        return await crypto.subtle.verify({ name: 'Ed25519' }, k, sig, msg);
      }
      const { ed25519 } = await noble();
      // RFC 8032 rules, as Go's crypto/ed25519 applies them (not ZIP-215).
      return ed25519.verify(sig, msg, pub, { zip215: false });
    }
    if (alg === 'bip340') {
      // bip340 signs the SHA-256 of the bytes (docs/protocol.md).
      const { schnorr } = await nobleSecp();
      return schnorr.verify(sig, await sha256(msg), pub);
    }
  } catch {
    return false;
  }
  return false;
}

export async function primaryId(alg: string, pub: Uint8Array): Promise<string> {
  const input = concat(utf8('kez-primary-id/v1'), new Uint8Array([0]), utf8(alg), new Uint8Array([0]), pub);
  return toHex(await sha256(input)).slice(0, 40);
}

/** The bytes X-KEZ-Auth signs: lines joined by \n, no trailing newline. */
export function requestString(server: string, method: string, path: string, ts: number, bindings: string[]): string {
  return [server, method, path, ...bindings, String(ts)].join('\n');
}

export async function signRequest(key: SigningKey, server: string, method: string, path: string, ts: number, bindings: string[]): Promise<string> {
  const sig = await sign(key, utf8(requestString(server, method, path, ts, bindings)));
  return `${ts}:${encodeB64(sig)}`;
}

export async function signDocument<P extends object>(key: SigningKey, payload: P): Promise<Signed<P>> {
  const sig = await sign(key, utf8(canonicalize(payload)));
  return { payload, signature: { alg: key.alg, key: encodeB64(key.publicKey), sig: encodeB64(sig) } };
}

/**
 * Verifies a signed document against the key the caller expects (the
 * sender's registered key): the document's own key must be that key.
 */
export async function verifyDocument(doc: Signed<unknown>, alg: string, expectedKey: Uint8Array<ArrayBuffer>): Promise<boolean> {
  const s = doc.signature;
  if (!s || s.alg !== alg) return false;
  let key: Uint8Array<ArrayBuffer>, sig: Uint8Array<ArrayBuffer>;
  try {
    key = decodeB64(s.key);
    sig = decodeB64(s.sig);
  } catch {
    return false;
  }
  if (!equalBytes(key, expectedKey)) return false;
  let canonical: string;
  try {
    canonical = canonicalize(doc.payload);
  } catch {
    return false;
  }
  return verify(alg, key, utf8(canonical), sig);
}
