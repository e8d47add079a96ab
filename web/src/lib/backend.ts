// Which implementation does the elliptic-curve work: the browser's WebCrypto
// where it has Ed25519 and X25519 (fast, keys handled natively), else
// @noble/curves, loaded only when needed so it costs nothing in browsers
// that do not need it.

export type Backend = 'webcrypto' | 'noble';

let forced: Backend | undefined;
const probes = new Map<string, Promise<boolean>>();

/** Forces a backend (tests run every path in one runtime); undefined: detect. */
export function forceBackend(b: Backend | undefined): void {
  forced = b;
  probes.clear();
}

export function webCryptoHas(alg: 'Ed25519' | 'X25519'): Promise<boolean> {
  if (forced) return Promise.resolve(forced === 'webcrypto');
  let p = probes.get(alg);
  if (!p) {
    const usages: KeyUsage[] = alg === 'Ed25519' ? ['sign', 'verify'] : ['deriveBits'];
    p = crypto.subtle
      .generateKey({ name: alg }, false, usages)
      .then(() => true)
      .catch(() => false);
    probes.set(alg, p);
  }
  return p;
}
