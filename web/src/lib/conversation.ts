// The conversation plaintexts (docs/protocol.md, "Conversations (clients)"):
// what travels inside ct besides v, from, to, ts and body, built and parsed
// here with their rules; and the bookkeeping over them a client shows:
// receipts per message and recipient, one reaction per person, deletion.

import { qualify, validHandle, validName } from './address';
import { decodeB64, encodeB64, sha256, utf8 } from './bytes';

export type Kind = 'text' | 'receipt' | 'reaction' | 'delete' | 'group';
export type ReceiptKind = 'delivered' | 'read';

export interface Thumb {
  blob: string;
  key: string;
  sha256: string;
  size: number;
  width: number;
  height: number;
}

export interface Attachment {
  blob: string;
  key: string;
  sha256: string;
  size: number;
  type: string;
  name: string;
  width?: number;
  height?: number;
  thumb?: Thumb;
}

export interface Reply {
  from: string;
  mid: string;
  body: string;
}

export interface Target {
  from: string;
  mid: string;
}

/** A conversation plaintext as read: every member checked, unknown ones dropped. */
export interface ConvPlaintext {
  v: 1;
  from: string;
  to: string;
  ts: number;
  body: string;
  kind: Kind;
  /** The message's id in its conversation: the envelope's id when the plaintext names none. */
  mid: string;
  group?: { id: string };
  peer?: string;
  reply?: Reply;
  attachments?: Attachment[];
  target?: Target;
  emoji?: string;
  receipt?: ReceiptKind;
  mids?: string[];
  /** A group snapshot, as received (checked by lib/groups). */
  state?: Record<string, unknown>;
}

export const MAX_ATTACHMENTS = 16;
export const MAX_RECEIPT_MIDS = 256;
export const MAX_REPLY_EXCERPT = 200; // characters
export const MAX_EMOJI_BYTES = 32;

const KINDS: readonly Kind[] = ['text', 'receipt', 'reaction', 'delete', 'group'];
const MEMBERS = ['v', 'from', 'to', 'ts', 'body', 'kind', 'mid', 'group', 'peer', 'reply', 'attachments', 'target', 'emoji', 'receipt', 'mids', 'state'];
const MEMBER_BY_LOWER = new Map(MEMBERS.map((m) => [m.toLowerCase(), m]));

export class InvalidPlaintext extends Error {
  override name = 'InvalidPlaintext';
}

const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

export const validMid = (s: unknown): s is string => typeof s === 'string' && ID_RE.test(s);
export { validHandle, validName };

/** 22 characters, 16 bytes of base64url. */
export function validGroupId(s: unknown): s is string {
  if (typeof s !== 'string' || s.length !== 22) return false;
  try {
    return decodeB64(s).length === 16;
  } catch {
    return false;
  }
}

const isObject = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x);
const isB64 = (s: unknown, bytes: number): boolean => {
  if (typeof s !== 'string') return false;
  try {
    return decodeB64(s).length === bytes;
  } catch {
    return false;
  }
};
const isSize = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isDim = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n > 0 && n <= 65535;
const chars = (s: string) => [...s].length;
const utf8Length = (s: string) => new TextEncoder().encode(s).length;

function thumbOf(t: unknown): Thumb {
  if (!isObject(t) || typeof t.blob !== 'string' || !isB64(t.blob, 32) || !isB64(t.key, 32) || !isB64(t.sha256, 32) || !isSize(t.size) || !isDim(t.width) || !isDim(t.height)) {
    throw new InvalidPlaintext('an attachment has a malformed thumb');
  }
  if (Math.max(t.width, t.height) > 320) throw new InvalidPlaintext('a thumb is larger than 320 pixels');
  return { blob: t.blob, key: t.key as string, sha256: t.sha256 as string, size: t.size, width: t.width, height: t.height };
}

function attachmentOf(a: unknown): Attachment {
  if (!isObject(a)) throw new InvalidPlaintext('an attachment is not an object');
  if (typeof a.blob !== 'string' || !isB64(a.blob, 32)) throw new InvalidPlaintext('an attachment names a malformed blob');
  if (!isB64(a.key, 32) || !isB64(a.sha256, 32)) throw new InvalidPlaintext('an attachment has a malformed key or sha256');
  if (!isSize(a.size)) throw new InvalidPlaintext('an attachment has a bad size');
  if (typeof a.type !== 'string' || a.type.length > 255 || typeof a.name !== 'string' || a.name.length > 255) throw new InvalidPlaintext('an attachment has a bad type or name');
  const out: Attachment = { blob: a.blob, key: a.key as string, sha256: a.sha256 as string, size: a.size, type: a.type, name: a.name };
  if (a.width !== undefined || a.height !== undefined) {
    if (!isDim(a.width) || !isDim(a.height)) throw new InvalidPlaintext('an attachment has bad dimensions');
    out.width = a.width;
    out.height = a.height;
  }
  if (a.thumb !== undefined) out.thumb = thumbOf(a.thumb);
  return out;
}

function targetOf(t: unknown, what: string): Target {
  if (!isObject(t) || !validName(t.from) || !validMid(t.mid)) throw new InvalidPlaintext(`${what} has a malformed target`);
  return { from: t.from, mid: t.mid };
}

/**
 * Reads a decrypted plaintext (JSON already parsed) of an envelope with
 * the given id from and to: v 1, from/to as the envelope's, every member
 * it knows well formed; a member that differs from a known one only in
 * case is refused, unknown ones are ignored.
 */
export function parsePlaintext(raw: unknown, env: { from: string; to: string; id: string }): ConvPlaintext {
  if (!isObject(raw)) throw new InvalidPlaintext('the plaintext is not an object');
  for (const k of Object.keys(raw)) {
    const known = MEMBER_BY_LOWER.get(k.toLowerCase());
    if (known !== undefined && known !== k) throw new InvalidPlaintext(`member ${JSON.stringify(k)} differs from ${known} only in case`);
  }
  if (raw.v !== 1) throw new InvalidPlaintext(`plaintext version ${JSON.stringify(raw.v)} is not supported`);
  if (raw.from !== env.from || raw.to !== env.to) throw new InvalidPlaintext('plaintext from/to differ from the envelope');
  if (typeof raw.body !== 'string' || typeof raw.ts !== 'number' || !Number.isSafeInteger(raw.ts)) throw new InvalidPlaintext('plaintext has no body or ts');
  const kind = raw.kind ?? 'text';
  if (!KINDS.includes(kind as Kind)) throw new InvalidPlaintext(`unknown kind ${JSON.stringify(kind)}`);
  const mid = raw.mid ?? env.id;
  if (!validMid(mid)) throw new InvalidPlaintext('malformed mid');
  const pt: ConvPlaintext = { v: 1, from: env.from, to: env.to, ts: raw.ts, body: raw.body, kind: kind as Kind, mid };
  if (raw.group !== undefined) {
    if (!isObject(raw.group) || !validGroupId(raw.group.id)) throw new InvalidPlaintext('malformed group');
    pt.group = { id: raw.group.id };
  }
  if (raw.peer !== undefined) {
    if (!validName(raw.peer)) throw new InvalidPlaintext('malformed peer');
    if (pt.group) throw new InvalidPlaintext('both group and peer');
    pt.peer = raw.peer;
  }
  if (raw.reply !== undefined) {
    const r = raw.reply;
    if (!isObject(r) || !validName(r.from) || !validMid(r.mid) || typeof r.body !== 'string' || chars(r.body) > MAX_REPLY_EXCERPT) throw new InvalidPlaintext('malformed reply');
    pt.reply = { from: r.from, mid: r.mid, body: r.body };
  }
  if (raw.attachments !== undefined) {
    if (!Array.isArray(raw.attachments) || raw.attachments.length > MAX_ATTACHMENTS) throw new InvalidPlaintext(`attachments is not a list of at most ${MAX_ATTACHMENTS}`);
    pt.attachments = raw.attachments.map(attachmentOf);
  }
  switch (pt.kind) {
    case 'reaction':
      pt.target = targetOf(raw.target, 'a reaction');
      if (typeof raw.emoji !== 'string' || utf8Length(raw.emoji) > MAX_EMOJI_BYTES || (raw.emoji !== '' && /^\s|\s$|[\u0000-\u001f]/.test(raw.emoji))) throw new InvalidPlaintext('a reaction has a malformed emoji');
      pt.emoji = raw.emoji;
      break;
    case 'delete':
      pt.target = targetOf(raw.target, 'a delete');
      break;
    case 'receipt': {
      if (raw.receipt !== 'delivered' && raw.receipt !== 'read') throw new InvalidPlaintext('a receipt is neither delivered nor read');
      const mids = raw.mids;
      if (!Array.isArray(mids) || mids.length < 1 || mids.length > MAX_RECEIPT_MIDS || !mids.every(validMid)) throw new InvalidPlaintext(`a receipt needs 1 to ${MAX_RECEIPT_MIDS} mids`);
      pt.receipt = raw.receipt;
      pt.mids = [...new Set(mids as string[])];
      break;
    }
    case 'group':
      if (!isObject(raw.state)) throw new InvalidPlaintext('a group change has no state');
      if (!pt.group || raw.state.id !== pt.group.id) throw new InvalidPlaintext("a group change's state is not its group's");
      pt.state = raw.state;
      break;
    case 'text':
      break;
  }
  return pt;
}

/**
 * The names inside a plaintext (peer, reply.from, target.from) in this
 * reader's form: the writer (the envelope's sender, at writerDomain) names
 * its own server's people bare and everyone else by address
 * (docs/protocol.md, "Conversations across servers"). from and to stay the
 * payload's; the group state is read by lib/groups. An address at own is
 * the bare handle whoever wrote it, a writer of this server included.
 */
export function qualifyPlaintext(pt: ConvPlaintext, writerDomain: string, own: string): ConvPlaintext {
  const q = (n: string) => qualify(n, writerDomain, own);
  return {
    ...pt,
    ...(pt.peer !== undefined ? { peer: q(pt.peer) } : {}),
    ...(pt.reply ? { reply: { ...pt.reply, from: q(pt.reply.from) } } : {}),
    ...(pt.target ? { target: { ...pt.target, from: q(pt.target.from) } } : {}),
  };
}

// --- building ------------------------------------------------------------

/** What every plaintext built here carries besides from, to and ts (set per recipient). */
export type Content = Omit<ConvPlaintext, 'v' | 'from' | 'to' | 'ts'>;

/** The plaintext for one recipient: `to` is that recipient; a sync copy (to = from) names the conversation. */
export function plaintextFor(c: Content, from: string, to: string, ts: number, peer?: string): Record<string, unknown> {
  const pt: Record<string, unknown> = { v: 1, from, to, ts, body: c.body, mid: c.mid };
  if (c.kind !== 'text') pt.kind = c.kind;
  if (c.group) pt.group = c.group;
  if (to === from && !c.group && peer) pt.peer = peer;
  for (const k of ['reply', 'attachments', 'target', 'emoji', 'receipt', 'mids', 'state'] as const) if (c[k] !== undefined) pt[k] = c[k];
  return pt;
}

/** The quote of msg a reply carries: the first 200 characters of its text. */
export function replyTo(from: string, mid: string, body: string): Reply {
  return { from, mid, body: [...body].slice(0, MAX_REPLY_EXCERPT).join('') };
}

export const textContent = (mid: string, body: string, extra: { group?: string; reply?: Reply; attachments?: Attachment[] } = {}): Content => ({
  kind: 'text',
  mid,
  body,
  ...(extra.group ? { group: { id: extra.group } } : {}),
  ...(extra.reply ? { reply: extra.reply } : {}),
  ...(extra.attachments?.length ? { attachments: extra.attachments } : {}),
});

export const reactionContent = (mid: string, target: Target, emoji: string, group?: string): Content => {
  if (utf8Length(emoji) > MAX_EMOJI_BYTES) throw new Error('a reaction is one emoji');
  return { kind: 'reaction', mid, body: '', target, emoji, ...(group ? { group: { id: group } } : {}) };
};

export const deleteContent = (mid: string, target: Target, group?: string): Content => ({ kind: 'delete', mid, body: '', target, ...(group ? { group: { id: group } } : {}) });

/** Receipts for mids, at most 256 to a plaintext: one Content per chunk. */
export function receiptContents(newMid: () => string, receipt: ReceiptKind, mids: string[], group?: string): Content[] {
  const out: Content[] = [];
  const unique = [...new Set(mids)];
  for (let i = 0; i < unique.length; i += MAX_RECEIPT_MIDS) {
    out.push({ kind: 'receipt', mid: newMid(), body: '', receipt, mids: unique.slice(i, i + MAX_RECEIPT_MIDS), ...(group ? { group: { id: group } } : {}) });
  }
  return out;
}

export const groupContent = (mid: string, state: Record<string, unknown> & { id: string }): Content => ({ kind: 'group', mid, body: '', group: { id: state.id }, state });

/** The envelope id of a message: the mid for one person, `<mid>:<to>` in a group send or beside a sync copy. */
export const envelopeId = (mid: string, to: string, batch: boolean) => (batch ? `${mid}:${to}` : mid);

/**
 * envelopeId for a recipient named in this identity's form: one elsewhere
 * (an id has no @, and one handle may be on several servers) is
 * `<mid>:<handle>:<domain>`, or, past 64 characters, `<mid>:` and 22
 * characters of the address's base64url SHA-256 (docs/protocol.md,
 * "Conversations (clients)"; client.envelopeID).
 */
export async function envelopeIdFor(mid: string, name: string, batch: boolean): Promise<string> {
  if (!batch) return mid;
  const at = name.indexOf('@');
  if (at < 0) return `${mid}:${name}`;
  const id = `${mid}:${name.slice(0, at)}:${name.slice(at + 1)}`;
  return id.length <= 64 ? id : `${mid}:${await nameDigest(name)}`;
}

/** 22 characters of a name's base64url SHA-256: an id part naming one person anywhere. */
export const nameDigest = async (name: string) => encodeB64(await sha256(utf8(name))).slice(0, 22);

/** Whether a kind gets receipts: only what people wrote (docs/protocol.md, "Receipts"). */
export const wantsReceipt = (k: Kind) => k === 'text';

/**
 * The conversation a plaintext belongs to, as this client (me) files it:
 * the group's id, or the other person (the sender; in a sync copy, its peer).
 * Null for a sync copy that names neither.
 */
export function conversationOf(pt: ConvPlaintext, me: string): string | null {
  if (pt.group) return 'g:' + pt.group.id;
  if (pt.from === me) return pt.peer ?? (pt.to !== me ? pt.to : null);
  return pt.from;
}

// --- receipts ---------------------------------------------------------------
// Lists, never objects keyed by handle: a person may be called "constructor".

/** An own message's receipts: who has it, who read it (read implies delivered). */
export interface Receipts {
  delivered: string[];
  read: string[];
}

/** Records a receipt from `from`; read is never taken back to delivered. True when something changed. */
export function applyReceipt(r: Receipts, from: string, kind: ReceiptKind): boolean {
  if (r.read.includes(from)) return false;
  const had = r.delivered.includes(from);
  if (!had) r.delivered.push(from);
  if (kind === 'read') r.read.push(from);
  return kind === 'read' || !had;
}

export type Ticks = 'sent' | 'delivered' | 'read';

/**
 * What an own message's ticks show: read once every recipient read it,
 * delivered once every one has it; read receipts count only when shown.
 */
export function ticks(r: Receipts | undefined, recipients: string[], showRead: boolean): Ticks {
  if (!r || recipients.length === 0) return 'sent';
  if (showRead && recipients.every((h) => r.read.includes(h))) return 'read';
  if (recipients.every((h) => r.delivered.includes(h))) return 'delivered';
  return 'sent';
}

/** Who read a message, sorted ("seen by" in a group); none when read receipts are off. */
export function seenBy(r: Receipts | undefined, showRead: boolean): string[] {
  if (!r || !showRead) return [];
  return [...r.read].sort();
}

// --- reactions ------------------------------------------------------------

/** A message's reactions: one per person. */
export type Reactions = { from: string; emoji: string }[];

/** The sender's reaction replaces its earlier one; "" takes it back. True when something changed. */
export function applyReaction(r: Reactions, from: string, emoji: string): boolean {
  const i = r.findIndex((x) => x.from === from);
  if (emoji === '') {
    if (i < 0) return false;
    r.splice(i, 1);
    return true;
  }
  if (i >= 0 && r[i]!.emoji === emoji) return false;
  if (i >= 0) r[i]!.emoji = emoji;
  else r.push({ from, emoji });
  return true;
}

/** Reactions grouped for display: each emoji once, with who chose it, the most chosen first. */
export function reactionSummary(r: Reactions | undefined): { emoji: string; by: string[] }[] {
  const by = new Map<string, string[]>();
  for (const { from, emoji } of [...(r ?? [])].sort((a, b) => (a.from < b.from ? -1 : 1))) by.set(emoji, [...(by.get(emoji) ?? []), from]);
  return [...by].map(([emoji, who]) => ({ emoji, by: who })).sort((a, b) => b.by.length - a.by.length || (a.emoji < b.emoji ? -1 : 1));
}

// --- deletion -------------------------------------------------------------

/** A delete for everyone is honoured only from the target's own sender. */
export const deleteAllowed = (deleteFrom: string, target: Target) => deleteFrom === target.from;
