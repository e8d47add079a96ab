// Publishing key documents (docs/protocol.md, "Key documents"): the device
// holding the primary key appends the next version of its identity's chain
// on the sig-server WebFinger links, to add a linked device's signing key.

import * as api from './api';
import { encodeB64, sha256, utf8 } from './bytes';
import { canonicalize } from './jcs';
import type { Identity } from './keys';
import { signDocument, type Signed } from './signing';
import { parseKeyDocument, type KeyPayload } from './trust';

const REL_KEYS = 'https://kez.lat/rel/keys';

/** The sig-server's base URL for handle, from the WebFinger link to its key document. */
export async function sigServerBase(handle: string, server: string, primaryId: string): Promise<string> {
  const jrd = await api.webfinger(handle, server);
  const href = jrd.links?.find((l) => l.rel === REL_KEYS)?.href;
  const tail = `/v1/keys/${primaryId}`;
  if (!href || !href.endsWith(tail)) throw new Error('This server has no sig-server, so devices cannot be linked.');
  return href.slice(0, -tail.length);
}

/** The identity's latest key document, verified on its own; undefined when it published none. */
export async function latestKeyDocument(base: string, primaryId: string): Promise<Signed<KeyPayload> | undefined> {
  const doc = await api.latestKeys<Signed<KeyPayload>>(base, primaryId);
  if (!doc) return undefined;
  const d = await parseKeyDocument(doc);
  if (d.primaryId !== primaryId) throw new Error('the sig-server answered another identity');
  return doc;
}

/** The next key document: the latest plus key, or version 1 listing the primary key and key. */
export async function nextKeyDocument(me: Identity, latest: Signed<KeyPayload> | undefined, key: { alg: string; key: string; label: string }, ts: number): Promise<Signed<KeyPayload>> {
  const payload: KeyPayload = latest
    ? {
        type: 'kez.sig.keys/v1',
        primary_id: me.primaryId,
        version: latest.payload.version + 1,
        prev: encodeB64(await sha256(utf8(canonicalize(latest.payload)))),
        signing_keys: [...latest.payload.signing_keys.filter((k) => k.key !== key.key), key],
        enc_key: latest.payload.enc_key,
        ts,
      }
    : {
        type: 'kez.sig.keys/v1',
        primary_id: me.primaryId,
        version: 1,
        prev: '',
        signing_keys: [{ alg: me.signing.alg, key: encodeB64(me.signing.publicKey), label: 'primary' }, key],
        enc_key: encodeB64(me.enc.publicKey),
        ts,
      };
  return signDocument(me.signing, payload);
}

/** Publishes the document adding key; answers the version published. */
export async function addSigningKey(me: Identity, key: { alg: string; key: string; label: string }): Promise<{ base: string; version: number }> {
  const base = await sigServerBase(me.handle, me.server, me.primaryId);
  const doc = await nextKeyDocument(me, await latestKeyDocument(base, me.primaryId), key, Math.floor(Date.now() / 1000));
  const r = await api.publishKeys(base, doc);
  return { base, version: r.version };
}
