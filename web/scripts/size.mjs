// The initial load: index.html and every script and stylesheet it references
// (modulepreload included), gzipped at level 9 as the server sends them.
// With --check, fails when over the budget of docs/benchmarks.md.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 120 * 1024;
const dist = new URL('../dist/', import.meta.url).pathname;
const html = readFileSync(dist + 'index.html', 'utf8');
const refs = [...html.matchAll(/(?:src|href)="\/([^"]+\.(?:js|css))"/g)].map((m) => m[1]);
let total = 0;
const rows = [];
for (const file of ['index.html', ...new Set(refs)]) {
  const body = readFileSync(dist + file);
  const gz = gzipSync(body, { level: 9 }).length;
  total += gz;
  rows.push(`${String(gz).padStart(8)} B gz  ${String(body.length).padStart(8)} B  ${file}`);
}
console.log(rows.join('\n'));
console.log(`initial load: ${(total / 1024).toFixed(1)} KiB gzipped (budget ${BUDGET / 1024} KiB)`);
if (process.argv.includes('--check') && total > BUDGET) {
  console.error(`over budget by ${total - BUDGET} bytes`);
  process.exit(1);
}
