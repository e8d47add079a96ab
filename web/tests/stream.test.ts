import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { openInboxStream, type LinkStatus } from '../src/lib/stream';
import type { Envelope } from '../src/lib/protocol';

/** Just enough EventSource to drive the stream from a test. */
class FakeEventSource {
  static all: FakeEventSource[] = [];
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  closed = false;
  private listeners: ((e: { data: string }) => void)[] = [];
  constructor(readonly url: string) {
    FakeEventSource.all.push(this);
  }
  addEventListener(_type: 'message', f: (e: { data: string }) => void) {
    this.listeners.push(f);
  }
  close() {
    this.closed = true;
  }
  emit(env: Partial<Envelope>) {
    for (const f of this.listeners) f({ data: JSON.stringify(env) });
  }
}

beforeEach(() => {
  FakeEventSource.all = [];
  vi.stubGlobal('EventSource', FakeEventSource);
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe('openInboxStream', () => {
  it('reconnects after a delay with fresh auth, from the last seq seen', async () => {
    let cursor = 0;
    let authCount = 0;
    const statuses: LinkStatus[] = [];
    const seen: number[] = [];
    const s = openInboxStream({
      url: async (since) => `/stream?auth=${++authCount}&since=${since}`,
      since: () => cursor,
      onEnvelope: (env) => {
        seen.push(env.seq);
        cursor = env.seq;
      },
      onStatus: (st) => statuses.push(st),
      retryDelay: () => 2000,
    });
    await vi.waitFor(() => expect(FakeEventSource.all).toHaveLength(1));
    const first = FakeEventSource.all[0]!;
    expect(first.url).toBe('/stream?auth=1&since=0');
    first.onopen!();
    first.emit({ seq: 4 });
    first.emit({ seq: 7 });
    first.onerror!();
    expect(first.closed).toBe(true); // not left to the browser's retry with stale auth
    expect(statuses).toEqual(['connecting', 'live', 'reconnecting']);
    await vi.advanceTimersByTimeAsync(1999);
    expect(FakeEventSource.all).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeEventSource.all).toHaveLength(2);
    expect(FakeEventSource.all[1]!.url).toBe('/stream?auth=2&since=7');
    expect(seen).toEqual([4, 7]);
    s.close();
    expect(FakeEventSource.all[1]!.closed).toBe(true);
  });

  it('stops reconnecting once closed', async () => {
    const s = openInboxStream({ url: async () => '/stream', since: () => 0, onEnvelope: () => {}, onStatus: () => {}, retryDelay: () => 10 });
    await vi.waitFor(() => expect(FakeEventSource.all).toHaveLength(1));
    FakeEventSource.all[0]!.onerror!();
    s.close();
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeEventSource.all).toHaveLength(1);
  });
});
