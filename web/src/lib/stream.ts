// The live inbox: one EventSource at a time. The browser's own reconnect
// would reuse the URL's auth, which goes stale after 5 minutes, so on error
// the stream is closed and reopened after a short delay with fresh auth,
// resuming from the last seq seen.

import type { Envelope } from './protocol';

export type LinkStatus = 'connecting' | 'live' | 'reconnecting';

export interface InboxStreamOptions {
  /** A URL with fresh auth that resumes after since. */
  url: (since: number) => Promise<string>;
  /** The last seq handled; read at each (re)connect. */
  since: () => number;
  onEnvelope: (env: Envelope) => void;
  /** A typing event: never stored, no id (docs/protocol.md, "POST /v1/typing"). */
  onTyping?: (e: { from: string; ct: string }) => void;
  onStatus: (s: LinkStatus) => void;
  /** Delay before reconnecting, growing on repeated failures (ms). */
  retryDelay?: (attempt: number) => number;
}

export interface InboxStream {
  close(): void;
}

const defaultDelay = (attempt: number) => Math.min(2000 * 2 ** Math.min(attempt, 3), 15_000);

export function openInboxStream(opts: InboxStreamOptions): InboxStream {
  let es: EventSource | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  let failures = 0;
  const delay = opts.retryDelay ?? defaultDelay;

  async function connect() {
    if (closed) return;
    let url: string;
    try {
      url = await opts.url(opts.since());
    } catch {
      return retry();
    }
    if (closed) return;
    es = new EventSource(url);
    es.onopen = () => {
      failures = 0;
      opts.onStatus('live');
    };
    es.addEventListener('message', (e) => {
      try {
        opts.onEnvelope(JSON.parse((e as MessageEvent<string>).data) as Envelope);
      } catch {
        // A frame that is not an envelope: the poll backstop catches up.
      }
    });
    es.addEventListener('typing', (e) => {
      try {
        const t = JSON.parse((e as MessageEvent<string>).data) as { from?: unknown; ct?: unknown };
        if (typeof t.from === 'string' && typeof t.ct === 'string') opts.onTyping?.({ from: t.from, ct: t.ct });
      } catch {
        // Not a typing event: ignored, it is only a hint.
      }
    });
    es.onerror = () => retry();
  }

  function retry() {
    es?.close();
    es = null;
    if (closed) return;
    opts.onStatus('reconnecting');
    clearTimeout(timer);
    timer = setTimeout(connect, delay(failures++));
  }

  opts.onStatus('connecting');
  void connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      es?.close();
      es = null;
    },
  };
}
