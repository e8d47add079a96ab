import { defineConfig } from 'vitest/config';

// End-to-end tests: Debian's chromium driven by playwright-core against the
// real kezchat binary (bin/kezchat, built with the web app embedded).
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    // A browser on two busy cores can take more than expect.poll's default
    // second to show a notification or follow a click; polls still end as
    // soon as the condition holds.
    expect: { poll: { timeout: 10_000 } },
  },
});
