// Addresses (docs/protocol.md, "Addresses", "Conversations across
// servers"): a person on another server is handle@domain; a person on this
// identity's own server is the bare handle. Every name this app keeps (a
// conversation's peer, a group's members, who wrote a message) is in that
// form, the reader's: bare for its own server's people, an address for
// everyone else's. A plaintext names people in its writer's form, so a
// reader qualifies each bare name with the writer's domain and takes an
// address at its own domain as the bare handle.

const HANDLE_RE = /^[a-z0-9][a-z0-9_.-]{2,31}$/;
const LABEL_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const MAX_DOMAIN = 253;

export const validHandle = (s: unknown): s is string => typeof s === 'string' && HANDLE_RE.test(s);

/** A test domain on loopback: 127.0.0.1:<port> or localhost:<port> (reached over plain HTTP). */
export function isLoopbackDomain(d: string): boolean {
  const m = /^(127\.0\.0\.1|localhost):([1-9][0-9]{0,4})$/.exec(d);
  return !!m && Number(m[2]) < 65536;
}

/** A lowercase DNS name of at most 253 bytes (labels of a-z 0-9 -, not at either end), or a loopback test domain. */
export function validDomain(d: unknown): d is string {
  if (typeof d !== 'string') return false;
  if (isLoopbackDomain(d)) return true;
  return d.length >= 1 && d.length <= MAX_DOMAIN && d.split('.').every((l) => LABEL_RE.test(l));
}

/** A bare handle or handle@domain. */
export function validName(s: unknown): s is string {
  if (typeof s !== 'string') return false;
  const at = s.indexOf('@');
  if (at < 0) return validHandle(s);
  return validHandle(s.slice(0, at)) && validDomain(s.slice(at + 1));
}

/** The handle of a name: the part before the @. */
export const handleOf = (name: string) => (name.includes('@') ? name.slice(0, name.indexOf('@')) : name);

/** The domain of a name, own for a bare handle. */
export const domainOf = (name: string, own: string) => (name.includes('@') ? name.slice(name.indexOf('@') + 1) : own);

/** Whether a name (in the reader's form) is a person on another server. */
export const isRemote = (name: string) => name.includes('@');

/** The name as this identity keeps it: an address at its own domain is the bare handle. */
export function localName(name: string, own: string): string {
  const at = name.indexOf('@');
  return at >= 0 && name.slice(at + 1) === own ? name.slice(0, at) : name;
}

/** handle@domain, or the bare handle when domain is own. */
export const nameOf = (handle: string, domain: string, own: string) => (domain === own ? handle : `${handle}@${domain}`);

/** The full address of a name, for safety numbers and display. */
export const fullAddress = (name: string, own: string) => (name.includes('@') ? name : `${name}@${own}`);

/**
 * A name read from a plaintext written at writerDomain, in this reader's
 * form: a bare handle is the writer's server's person; an address at own
 * is this server's.
 */
export function qualify(name: string, writerDomain: string, own: string): string {
  if (name.includes('@')) return localName(name, own);
  return writerDomain === own ? name : `${name}@${writerDomain}`;
}

/**
 * What a person typed into a box that takes people (the new-chat box, group
 * members): "@bob", "bob", "bob@two.example", in any case. Answers the
 * name in this identity's form, or a sentence saying what is wrong.
 * Loopback test domains are taken only while this identity's own server
 * is on one (a test), as the server's --federation-insecure-loopback.
 */
export function parseName(input: string, own: string): { name: string } | { problem: string } {
  const s = input.trim().replace(/^@/, '').toLowerCase();
  if (!s) return { problem: 'Type a handle, or handle@domain for someone on another server.' };
  const at = s.indexOf('@');
  if (at < 0) return { name: s };
  const handle = s.slice(0, at);
  const domain = s.slice(at + 1);
  if (!validHandle(handle)) return { problem: `"${handle}" is not a handle: 3 to 32 of a-z 0-9 _ - . starting with a letter or digit.` };
  if (!validDomain(domain) || (isLoopbackDomain(domain) && !isLoopbackDomain(own))) return { problem: `"${domain}" is not a server's domain.` };
  return { name: localName(`${handle}@${domain}`, own) };
}

/** The origin of a domain's server: https, or plain http for a loopback test domain. */
export const baseUrl = (domain: string) => (isLoopbackDomain(domain) ? `http://${domain}` : `https://${domain}`);

/** How a link another server answers may be followed: https, or http on a loopback test domain. */
export function linkAllowed(link: string): boolean {
  let u: URL;
  try {
    u = new URL(link);
  } catch {
    return false;
  }
  if (u.username || u.password || !u.host) return false;
  return u.protocol === 'https:' || (u.protocol === 'http:' && isLoopbackDomain(u.host));
}
