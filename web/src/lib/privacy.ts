// The privacy setting a server keeps for an identity (docs/protocol.md,
// "PUT /v1/privacy/{handle}"): whether strangers on other servers may
// write, the people elsewhere it knows, the people and servers it blocks.
// The server refuses a setting past its caps, so whatever the client adds
// to known is bounded here first.

import type { Privacy } from './api';

/** At most this many known addresses (the server's MaxPrivacyKnown). */
export const MAX_PRIVACY_KNOWN = 5000;
/** The body of PUT /v1/privacy at most (256 KiB). */
export const MAX_PRIVACY_BYTES = 256 << 10;

const bytesOf = (p: Privacy) => new TextEncoder().encode(JSON.stringify(p)).length;

/** The setting as stored, whatever an older server answered (absent lists). */
export const normalPrivacy = (p: Partial<Privacy>): Privacy => ({ strangers: p.strangers ?? 'accept', known: [...new Set(p.known ?? [])], blocked: [...(p.blocked ?? [])] });

/**
 * p with the addresses of add known, within the caps (MAX_PRIVACY_KNOWN
 * entries, MAX_PRIVACY_BYTES of body). Room is made first by forgetting
 * known entries that wanted says are no longer anyone this identity chats
 * with; what still does not fit of add is left out (the earliest of add
 * are kept). An address or a domain the setting blocks is not added.
 * Answers the new setting, whether it differs from p, and what of add was
 * left out.
 */
export function withKnown(p: Privacy, add: Iterable<string>, wanted: (name: string) => boolean = () => true): { privacy: Privacy; changed: boolean; left: string[] } {
  const known = [...new Set(p.known)];
  const has = new Set(known);
  const blocked = new Set(p.blocked);
  const fresh: string[] = [];
  for (const a of add) {
    if (has.has(a) || blocked.has(a) || blocked.has(a.slice(a.indexOf('@') + 1))) continue;
    has.add(a);
    fresh.push(a);
  }
  const left: string[] = [];
  // The body's bytes, as the entries' (addresses are ASCII: their JSON and a comma each).
  const cost = (a: string) => JSON.stringify(a).length + 1;
  const base = bytesOf({ strangers: p.strangers, known: [], blocked: [...p.blocked] });
  let bytes = base + known.reduce((n, k) => n + cost(k), 0) + fresh.reduce((n, k) => n + cost(k), 0);
  let count = known.length + fresh.length;
  const over = () => count > MAX_PRIVACY_KNOWN || bytes > MAX_PRIVACY_BYTES;
  // Room is made by forgetting known people this identity no longer chats with, then by leaving out the latest of add.
  const dropped = new Set<string>();
  for (const k of known) {
    if (!over()) break;
    if (wanted(k)) continue;
    dropped.add(k);
    count--;
    bytes -= cost(k);
  }
  while (over() && fresh.length) {
    const a = fresh.pop()!;
    left.unshift(a);
    count--;
    bytes -= cost(a);
  }
  const changed = fresh.length > 0 || dropped.size > 0 || known.length !== p.known.length;
  return { privacy: { strangers: p.strangers, known: [...known.filter((k) => !dropped.has(k)), ...fresh], blocked: [...p.blocked] }, changed, left };
}
