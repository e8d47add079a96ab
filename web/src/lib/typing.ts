// Typing indicators (docs/protocol.md, "Typing"): per recipient an HPKE
// ciphertext (info "kez-chat/v1 typing") of {"v": 1, "from", "to", "ts",
// "typing", "group"?}, sent at most every 3 s while typing and once false
// when it stops; shown for 6 s unless renewed. People on other servers get
// theirs in a signed kez.chat.typing/v1 document per server ("Typing across
// servers"), relayed by the own server.

import { validName } from './address';
import { decodeB64, encodeB64, fromUtf8, utf8 } from './bytes';
import { openWithInfo, sealWithInfo, type EncKeyPair } from './crypto';
import { validGroupId } from './conversation';
import { signDocument, type Signed, type SigningKey } from './signing';

export const TYPING_INFO = 'kez-chat/v1 typing';
export const TYPING_EVERY_MS = 3000;
export const TYPING_SHOWN_MS = 6000;
export const MAX_TYPING_CT = 512;
export const TYPE_TYPING = 'kez.chat.typing/v1';
/** At most this many recipients on one document, and documents in one request. */
export const MAX_TYPING_RECIPIENTS = 256;
export const MAX_TYPING_DOCUMENTS = 16;

/** A typing document for the people of another server: from the sender's address, one ct per recipient there. */
export interface TypingPayload {
  type: typeof TYPE_TYPING;
  server: string;
  from: string;
  ts: number;
  to: { to: string; ct: string }[];
}

/** Signs a typing document as message documents are signed (JCS of the payload). */
export function newTypingDocument(signing: SigningKey, server: string, from: string, ts: number, to: { to: string; ct: string }[]): Promise<Signed<TypingPayload>> {
  return signDocument(signing, { type: TYPE_TYPING, server, from, ts, to });
}

export interface TypingNote {
  v: 1;
  from: string;
  to: string;
  ts: number;
  typing: boolean;
  group?: { id: string };
}

export async function sealTyping(recipientEncKey: string, note: TypingNote): Promise<string> {
  const ct = encodeB64(await sealWithInfo(decodeB64(recipientEncKey), utf8(JSON.stringify(note)), TYPING_INFO));
  return ct;
}

/** Opens a typing event; null when it does not open or names another from/to than the event (dropped). */
export async function openTyping(me: { handle: string; enc: EncKeyPair }, event: { from: string; ct: string }): Promise<TypingNote | null> {
  try {
    const raw = decodeB64(event.ct);
    if (raw.length > MAX_TYPING_CT) return null;
    const n = JSON.parse(fromUtf8(await openWithInfo(me.enc, raw, TYPING_INFO))) as Record<string, unknown>;
    if (n.v !== 1 || !validName(event.from) || n.from !== event.from || n.to !== me.handle || typeof n.typing !== 'boolean' || typeof n.ts !== 'number') return null;
    const g = n.group as { id?: unknown } | undefined;
    if (g !== undefined && !validGroupId(g?.id)) return null;
    return { v: 1, from: n.from, to: n.to, ts: n.ts, typing: n.typing, ...(g ? { group: { id: g.id as string } } : {}) };
  } catch {
    return null;
  }
}

/**
 * Who is typing where, each shown until its 6 s run out. Keys are
 * conversation keys (a handle, or "g:<id>").
 */
export class TypingBoard {
  private until = new Map<string, Map<string, number>>();

  note(conversation: string, who: string, typing: boolean, now: number): void {
    let c = this.until.get(conversation);
    if (!typing) {
      c?.delete(who);
      return;
    }
    if (!c) this.until.set(conversation, (c = new Map()));
    c.set(who, now + TYPING_SHOWN_MS);
  }

  /** Who types in the conversation at now, sorted. */
  typing(conversation: string, now: number): string[] {
    const c = this.until.get(conversation);
    if (!c) return [];
    for (const [who, t] of c) if (t <= now) c.delete(who);
    return [...c.keys()].sort();
  }
}

/**
 * When to tell the others: the first keystroke at once, then at most every
 * 3 s while typing, and false once when typing stops.
 */
export class TypingSender {
  private last = -Infinity;
  private on = false;

  /** A keystroke at now: true when a "typing" note is due. */
  keystroke(now: number): boolean {
    if (this.on && now - this.last < TYPING_EVERY_MS) return false;
    this.on = true;
    this.last = now;
    return true;
  }

  /** Typing stopped (sent, cleared, idle): true when a "stopped" note is due. */
  stop(): boolean {
    if (!this.on) return false;
    this.on = false;
    this.last = -Infinity;
    return true;
  }
}

/** Human words for who types. */
export function typingLine(who: string[]): string {
  if (who.length === 0) return '';
  if (who.length === 1) return `${who[0]} is typing…`;
  if (who.length === 2) return `${who[0]} and ${who[1]} are typing…`;
  return `${who.length} people are typing…`;
}
