// Empties dist/ before a build, keeping dist/.keep: go:embed needs a file to
// match when the app was never built, so that file is committed.
import { readdirSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const dist = new URL('../dist/', import.meta.url).pathname;
mkdirSync(dist, { recursive: true });
for (const name of readdirSync(dist)) {
  if (name !== '.keep') rmSync(join(dist, name), { recursive: true, force: true });
}
