// The signed-in identity and its chat state, shared by every screen.

import { Chat, convOfRoute } from './chat.svelte';
import { loadIdentity, saveIdentity, type Identity } from './keys';

export const session = $state<{ ready: boolean; chat: Chat | null }>({ ready: false, chat: null });

export async function restoreSession(): Promise<void> {
  try {
    const id = await loadIdentity();
    if (id) await startSession(id, false);
  } finally {
    session.ready = true;
  }
}

export async function startSession(id: Identity, save = true): Promise<void> {
  if (save) id = await saveIdentity(id);
  const chat = new Chat(id);
  await chat.load(conversationInAddress());
  session.chat = chat;
}

/** The conversation the address opens (#/chat/<peer>), read with the list. */
function conversationInAddress(): string | undefined {
  const peer = /^#\/chat\/([^/?]+)/.exec(location.hash)?.[1];
  try {
    return peer === undefined ? undefined : convOfRoute(decodeURIComponent(peer));
  } catch {
    return undefined; // not percent-encoded properly: the router shows it as it can
  }
}
