// The stored form of a chat history, in IndexedDB under historyKey(handle).
// The page writes it; the service worker reads it to route a notification.

import type { Attachment, Reactions, ReceiptKind, Receipts, Reply } from './conversation';
import type { GroupHistory } from './groups';
import type { Envelope, MessagePayload } from './protocol';
import type { Signed } from './signing';

export type MessageState = 'pending' | 'sent' | 'failed' | 'received';

export interface ChatMessage {
  id: string; // the sender's message id
  mine: boolean;
  body: string;
  ts: number; // Unix seconds
  seq?: number; // the inbox seq of a received message
  state: MessageState;
  doc?: Signed<MessagePayload>; // an own message, kept for retry until sent
  /** The documents of an own message sent as a group send (one per recipient, and the sync copy), kept for retry. */
  docs?: Signed<MessagePayload>[];
  /** Who wrote it (in a group; an own message: me). Absent in histories written before: the peer, or me. */
  from?: string;
  /** text (the default) or note: a group change shown as a line. */
  kind?: 'text' | 'note';
  reply?: Reply;
  attachments?: Attachment[];
  /** Own messages: how far each recipient got. */
  receipts?: Receipts;
  reactions?: Reactions;
  /** Deleted for everyone by its sender: no body, no attachments. */
  deleted?: boolean;
  /** Received messages: the last receipt sent for it. */
  receiptSent?: ReceiptKind;
  /** An own message's upload, 0 to 1, while its attachments upload. */
  progress?: number;
}

export interface Conversation {
  peer: string;
  messages: ChatMessage[];
  unread: number;
  /** Envelopes from the peer held while its keys are in question (Chat.keyProblems). */
  withheld?: Envelope[];
  /** A group conversation (peer is "g:<id>"): its name, and whether this client is in it. */
  group?: { id: string; name: string; member: boolean };
}

export interface History {
  cursor: number;
  /**
   * The conversations as a list: a handle is never a property name, so
   * "constructor" or "__proto__" is a peer like any other. Histories
   * written before held an object keyed by peer.
   */
  conversations: Conversation[] | Record<string, Conversation>;
  /** The groups' versions this client took, by group id. */
  groups?: [string, GroupHistory][];
}

/** The conversations of a stored history, by peer. */
export function conversationsOf(h: History | undefined): Map<string, Conversation> {
  const list = Array.isArray(h?.conversations) ? h.conversations : Object.entries(h?.conversations ?? {}).map(([, c]) => c);
  return new Map(list.map((c) => [c.peer, c]));
}

/** The IndexedDB key of a handle's history. */
export const historyKey = (handle: string) => `history:${handle}`;
