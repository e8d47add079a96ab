// Message documents: building, verifying and opening them
// (docs/protocol.md, "POST /v1/messages", "Message encryption").

import { decodeB64, encodeB64, fromUtf8, utf8 } from './bytes';
import { open, seal, type EncKeyPair } from './crypto';
import { signDocument, verifyDocument, type Signed, type SigningKey } from './signing';

export const TYPE_MESSAGE = 'kez.chat.message/v1';
export const TYPE_REGISTER = 'kez.chat.register/v1';

export interface PublicUser {
  handle: string;
  server: string;
  primary_id: string;
  alg: string;
  key: string;
  enc_key: string;
  created_at: number;
  /** The identity's device keys and key document version, when it published any. */
  signing_keys?: { alg: string; key: string; label: string }[];
  keys_version?: number;
}

export interface MessagePayload {
  type: string;
  server: string;
  from: string;
  to: string;
  id: string;
  ts: number;
  ct: string;
  /** Ids of attachment blobs the message names, so the server keeps them. */
  blobs?: string[];
}

export interface RegisterPayload {
  type: string;
  server: string;
  handle: string;
  primary_id: string;
  enc_key: string;
  ts: number;
}

export interface Envelope {
  seq: number;
  received_at: number;
  message: Signed<MessagePayload>;
}

export interface Plaintext {
  v: number;
  from: string;
  to: string;
  ts: number;
  body: string;
}

/** What a message is sent and opened with: the registered identity's keys. */
export interface MessageKeys {
  handle: string;
  server: string;
  signing: SigningKey;
  enc: EncKeyPair;
}

/** A message payload's members, sorted: without attachments, and with. */
const PAYLOAD_MEMBERS = 'ct,from,id,server,to,ts,type';
const PAYLOAD_MEMBERS_BLOBS = 'blobs,ct,from,id,server,to,ts,type';

export class InvalidMessage extends Error {
  override name = 'InvalidMessage';
}

/** A random message id: 16 bytes, base64url (as the Go client makes them). */
export function newMessageId(): string {
  return encodeB64(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * Who a document to a person of server names as its sender: the bare
 * handle on its own server, its address elsewhere (docs/protocol.md,
 * "Sending: relayed by the sender's server").
 */
export const fromFor = (me: { handle: string; server: string }, server: string) => (server === me.server ? me.handle : `${me.handle}@${me.server}`);

/** The sender name a document of sender carries, as fromFor made it. */
const expectedFrom = (sender: PublicUser, me: { server: string }) => (sender.server === me.server ? sender.handle : `${sender.handle}@${sender.server}`);

export async function newMessage(me: MessageKeys, to: PublicUser, id: string, body: string, ts: number): Promise<Signed<MessagePayload>> {
  const from = fromFor(me, to.server);
  const pt: Plaintext = { v: 1, from, to: to.handle, ts, body };
  const ct = await seal(decodeB64(to.enc_key), utf8(JSON.stringify(pt)));
  return signDocument(me.signing, { type: TYPE_MESSAGE, server: to.server, from, to: to.handle, id, ts, ct: encodeB64(ct) });
}

/**
 * A message document of any plaintext (docs/protocol.md, "Conversations"):
 * sealed to `to`, with the blobs it names. For a person of another server
 * it is signed for that server, from this identity's address; the
 * plaintext's from and to must be the payload's.
 */
export async function newMessageOf(me: MessageKeys, to: PublicUser, id: string, plaintext: Record<string, unknown>, ts: number, blobs: string[] = []): Promise<Signed<MessagePayload>> {
  const from = fromFor(me, to.server);
  if (plaintext.from !== from || plaintext.to !== to.handle) throw new Error(`a plaintext from ${String(plaintext.from)} to ${String(plaintext.to)} in a document from ${from} to ${to.handle}`);
  const ct = await seal(decodeB64(to.enc_key), utf8(JSON.stringify(plaintext)));
  const payload: MessagePayload = { type: TYPE_MESSAGE, server: to.server, from, to: to.handle, id, ts, ct: encodeB64(ct) };
  if (blobs.length) payload.blobs = [...new Set(blobs)];
  return signDocument(me.signing, payload);
}

/** Who an envelope claims to be from, before verifying (to look them up). */
export function claimedSender(env: Envelope): string {
  const from = env?.message?.payload?.from;
  if (typeof from !== 'string') throw new InvalidMessage(`seq ${env?.seq}: payload has no from`);
  return from;
}

/**
 * Verifies and opens an envelope of me's inbox sent by sender: the signature
 * must be by sender's registered key, the payload a message from sender (its
 * address when it is of another server) to me on this server, and the
 * plaintext must name the same from and to.
 */
export async function openEnvelope(env: Envelope, me: MessageKeys, sender: PublicUser): Promise<Plaintext> {
  const pt = (await openEnvelopeRaw(env, me, sender)) as unknown as Plaintext;
  if (typeof pt.body !== 'string' || typeof pt.ts !== 'number') throw new InvalidMessage(`seq ${env.seq}: plaintext has no body or ts`);
  return { v: 1, from: pt.from, to: pt.to, ts: pt.ts, body: pt.body };
}

/** The keys a sender's documents may be signed with: its registered key and its (verified) device keys. */
function senderKeys(sender: PublicUser): { alg: string; key: string }[] {
  return [{ alg: sender.alg, key: sender.key }, ...(sender.signing_keys ?? [])];
}

/**
 * openEnvelope's checks, answering the plaintext as parsed JSON, v 1 and
 * from/to checked (lib/conversation reads the rest). A document signed by
 * one of the sender's device keys is accepted as by its registered key.
 */
export async function openEnvelopeRaw(env: Envelope, me: MessageKeys, sender: PublicUser): Promise<Record<string, unknown>> {
  const bad = (why: string) => new InvalidMessage(`seq ${env.seq}: ${why}`);
  const p = env.message.payload;
  const sig = env.message.signature;
  const key = senderKeys(sender).find((k) => k.alg === sig?.alg && k.key === sig?.key) ?? { alg: sender.alg, key: sender.key };
  if (!(await verifyDocument(env.message, key.alg, decodeB64(key.key)))) throw bad(`not signed by the registered key or a device key of ${sender.handle}`);
  // Exactly the members the Go server takes: a signed "From" beside "from"
  // must not mean one thing here and another there.
  const members = Object.keys(p).sort().join(',');
  if (members !== PAYLOAD_MEMBERS && members !== PAYLOAD_MEMBERS_BLOBS) throw bad(`payload members are ${members}, not ${PAYLOAD_MEMBERS}[,blobs]`);
  if (p.blobs !== undefined && (!Array.isArray(p.blobs) || p.blobs.length < 1 || p.blobs.length > 16 || !p.blobs.every((b) => typeof b === 'string'))) {
    throw bad('blobs is not 1 to 16 ids');
  }
  if (p.type !== TYPE_MESSAGE) throw bad(`payload type is ${JSON.stringify(p.type)}`);
  const from = expectedFrom(sender, me);
  if (p.from !== from) throw bad(`from ${JSON.stringify(p.from)}, but the key is ${from}'s`);
  if (p.to !== me.handle) throw bad(`addressed to ${JSON.stringify(p.to)}`);
  if (p.server !== me.server) throw bad(`for server ${JSON.stringify(p.server)}`);
  if (typeof p.ct !== 'string') throw bad('no ct');
  let raw: Uint8Array;
  try {
    raw = await open(me.enc, decodeB64(p.ct));
  } catch (e) {
    throw bad(`cannot be opened: ${(e as Error).message}`);
  }
  let pt: Record<string, unknown>;
  try {
    pt = JSON.parse(fromUtf8(raw)) as Record<string, unknown>;
  } catch {
    throw bad('plaintext is not JSON');
  }
  if (pt === null || typeof pt !== 'object' || Array.isArray(pt) || pt.v !== 1) throw bad(`plaintext version ${JSON.stringify(pt?.v)} is not supported`);
  if (pt.from !== p.from || pt.to !== p.to) throw bad('plaintext from/to differ from the envelope');
  return pt;
}
