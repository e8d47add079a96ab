// A long list renders what fills the first screen at once and the rest
// after that screen is painted: 100,000 messages in 200 conversations open
// in one frame (docs/benchmarks.md, "The web app's history").

/** Conversation rows rendered in the first frame: more than a tall window shows. */
export const FIRST_ROWS = 30;
/** Messages of a conversation's last page rendered in the first frame. */
export const FIRST_MESSAGES = 20;

/**
 * Calls fn once the next frame is painted (a task queued from
 * requestAnimationFrame runs after that frame's paint). Returns what
 * cancels it, for an $effect's teardown.
 */
export function afterPaint(fn: () => void): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const frame = requestAnimationFrame(() => (timer = setTimeout(fn)));
  return () => {
    cancelAnimationFrame(frame);
    clearTimeout(timer);
  };
}
