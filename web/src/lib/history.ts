// The stored form of a chat history, in IndexedDB under historyKey(handle).
// The page writes it; the service worker reads it to route a notification.

import type { MessagePayload } from './protocol';
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
}

export interface History {
  cursor: number;
  conversations: Record<string, Conversation>;
}

/** The IndexedDB key of a handle's history. */
export const historyKey = (handle: string) => `history:${handle}`;
