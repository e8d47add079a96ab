// The stored form of a chat history, in IndexedDB under historyKey(handle).
// The page writes it; the service worker reads it to route a notification.

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
}

export interface Conversation {
  peer: string;
  messages: ChatMessage[];
  unread: number;
  /** Envelopes from the peer held while its keys are in question (Chat.keyProblems). */
  withheld?: Envelope[];
}

export interface History {
  cursor: number;
  /**
   * The conversations as a list: a handle is never a property name, so
   * "constructor" or "__proto__" is a peer like any other. Histories
   * written before held an object keyed by peer.
   */
  conversations: Conversation[] | Record<string, Conversation>;
}

/** The conversations of a stored history, by peer. */
export function conversationsOf(h: History | undefined): Map<string, Conversation> {
  const list = Array.isArray(h?.conversations) ? h.conversations : Object.entries(h?.conversations ?? {}).map(([, c]) => c);
  return new Map(list.map((c) => [c.peer, c]));
}

/** The IndexedDB key of a handle's history. */
export const historyKey = (handle: string) => `history:${handle}`;
