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
  },
});
