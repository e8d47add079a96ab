// A person on another server, learnt from that server itself
// (docs/protocol.md, "Conversations across servers"): WebFinger at the
// person's domain names the record and the key document; the record must be
// that address's, its primary_id its key's. What it answers is then checked
// as a local peer's is (lib/trust: the key document chain, the pin, kept by
// address), never taken from this identity's own server.

import { baseUrl, handleOf, domainOf, linkAllowed } from './address';
import { decodeB64 } from './bytes';
import type { PublicUser } from './protocol';
import { primaryId } from './signing';
import type { TrustDeps } from './trust';

export interface JRD {
  subject?: string;
  links?: { rel: string; href?: string }[];
}

/** GETs an absolute URL and answers its JSON (api.getJSON in the browser; tests give fakes). */
export type FetchJSON = <T>(url: string) => Promise<T>;

/** The person's server's answer could not be used: its WebFinger, record or links are not the address's. */
export class RemoteRefused extends Error {
  override name = 'RemoteRefused';
}

/** What was learnt of an address: its record, and how its key document is reached (for lib/trust). */
export interface RemotePerson {
  record: PublicUser;
  jrd: JRD;
}

/** acct:handle@domain at domain's server. */
export const webfingerUrl = (address: string) => `${baseUrl(domainOf(address, ''))}/.well-known/webfinger?resource=${encodeURIComponent('acct:' + address)}`;

/**
 * Resolves address (handle@domain) from domain: WebFinger's subject must
 * be the address, its self link an https URL (http on a loopback test
 * domain), the record it names the address's, with a primary_id that
 * derives from its key.
 */
export async function resolveRemote(address: string, get: FetchJSON): Promise<RemotePerson> {
  const handle = handleOf(address);
  const domain = domainOf(address, '');
  const jrd = await get<JRD>(webfingerUrl(address));
  if (jrd?.subject !== `acct:${address}`) throw new RemoteRefused(`${domain} answers WebFinger about ${JSON.stringify(jrd?.subject)}, not ${address}`);
  const self = jrd.links?.find((l) => l.rel === 'self')?.href;
  if (!self || !linkAllowed(self)) throw new RemoteRefused(`${domain} links the record of ${address} to ${JSON.stringify(self)}`);
  const rec = await get<PublicUser>(self);
  if (rec?.handle !== handle || rec.server !== domain) throw new RemoteRefused(`${domain} answers the record of ${rec?.handle}@${rec?.server} for ${address}`);
  let key: Uint8Array;
  try {
    key = decodeB64(rec.key);
    decodeB64(rec.enc_key);
  } catch {
    throw new RemoteRefused(`${domain} answers a malformed record for ${address}`);
  }
  if (key.length !== 32 || (await primaryId(rec.alg, key)) !== rec.primary_id) throw new RemoteRefused(`the record of ${address} names a primary_id its key does not derive`);
  return { record: rec, jrd };
}

/**
 * The trust deps for a remote person: its WebFinger as resolved (so the key
 * document link is the one its domain answered), the key log where that
 * link points, which must be https (http on loopback).
 */
export function remoteTrust(p: RemotePerson, keyLog: TrustDeps['keyLog']): TrustDeps {
  return {
    webfinger: async () => p.jrd,
    keyLog: async (base, pid, from) => {
      if (!linkAllowed(base + '/')) throw new RemoteRefused(`the key documents of ${p.record.handle}@${p.record.server} are at ${base}`);
      return keyLog(base, pid, from);
    },
  };
}
