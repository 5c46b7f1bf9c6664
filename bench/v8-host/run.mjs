// Keygate's cached JWT request (C) beside the floor filter's H1 (headers read, one added) and
// K8 (C's unavoidable work alone), in Node's V8 (the engine Envoy embeds), through host.mjs:
// requests back to back, the modules alternating round by round, so the module's own code is
// timed without Envoy and without the noise between Envoy processes (`make bench-v8`).
//
//   node bench/v8-host/run.mjs --keygate <keygate.wasm> --floor <floor-filter.wasm>
//        [--baseline <an earlier keygate.wasm>: C0, C with that build]
//        [--rounds 41] [--per-round 5000] [--only C] [--count: host calls per request]
//        [--evict <MiB>: also time each request after walking a buffer that size (cold caches)]
//        [--profile: C's requests under V8's sampling profiler, by Wasm function]
//
// The host calls run in JavaScript here, not in Envoy's C++: compare modules with each other,
// not these figures with Envoy's.
import { generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Module, Process } from './host.mjs';

const args = process.argv.slice(2);
const option = (name) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const flag = (name) => args.includes(name);
const keygateWasm = option('--keygate');
const floorWasm = option('--floor');
const baselineWasm = option('--baseline');
if (!keygateWasm || !floorWasm) {
  console.error('usage: run.mjs --keygate <keygate.wasm> --floor <floor-filter.wasm> [--baseline <keygate.wasm>] [--rounds N] [--per-round N] [--evict MiB] [--only NAME] [--count] [--profile]');
  process.exit(2);
}
const only = option('--only');
const ROUNDS = Number(option('--rounds') ?? 41);
const PER_ROUND = Number(option('--per-round') ?? 5000);
const EVICT_MIB = Number(option('--evict') ?? 0);

const b64u = (data) => Buffer.from(data).toString('base64url');
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'bench', alg: 'ES256', use: 'sig' };
const now = Math.floor(Date.now() / 1000);
const claims = { iss: 'https://issuer.bench', aud: 'bench', sub: 'bench-user', scope: 'demo:read', iat: now, exp: now + 86400 };
const signingInput = `${b64u(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: 'bench' }))}.${b64u(JSON.stringify(claims))}`;
const signature = sign('sha256', Buffer.from(signingInput), { key: privateKey, dsaEncoding: 'ieee-p1363' });
const token = `${signingInput}.${b64u(signature)}`;

// envoy/envoy.yaml's plugin JSON, as bench/run.py's keygate_plugin() shapes it for C.
const yaml = readFileSync(new URL('../../envoy/envoy.yaml', import.meta.url), 'utf8').split('\n');
const marker = yaml.findIndex((l) => l.trim().startsWith('# KEYGATE-PLUGIN-CONFIG'));
const indent = yaml[marker + 1].length - yaml[marker + 1].trimStart().length;
let end = marker + 2;
while (end < yaml.length && (!yaml[end].trim() || yaml[end].length - yaml[end].trimStart().length > indent)) end++;
const plugin = JSON.parse(yaml.slice(marker + 2, end).join('\n'));
plugin.cache.ttl_seconds = 86400;
plugin.jwt = {
  max_token_bytes: 8192,
  cache_max_entries: 1000,
  host_crypto: false,
  issuers: [{ issuer: claims.iss, audiences: [claims.aud], algorithms: ['ES256'], jwks: { inline: { keys: [jwk] } }, revocation: 'none' }],
};
const env = { KEYGATE_GATEWAY_KEY: 'ab'.repeat(32), KEYGATE_SERVICE_TOKEN: 't'.repeat(40) };

const request = [
  [':authority', 'localhost'], [':path', '/v1/bench'], [':method', 'GET'], [':scheme', 'http'],
  ['user-agent', 'wrk'], ['authorization', `Bearer ${token}`],
  ['x-forwarded-proto', 'http'], ['x-request-id', '6f1c2c55-3a1e-4f0e-9d0a-1b7f3c9e2a10'],
];

const proc = new Process();
proc.counting = flag('--count');
const modules = {
  H1: new Module(proc, floorWasm, { vmId: 'h1', pluginConfig: 'floor', env }),
  K8: new Module(proc, floorWasm, { vmId: 'k8', pluginConfig: 'token,rewrite', env }),
  C: new Module(proc, keygateWasm, { vmId: 'keygate', pluginConfig: JSON.stringify(plugin), env, log: process.env.V8HOST_LOG === '1' }),
};
if (baselineWasm) {
  modules.C0 = new Module(proc, baselineWasm, { vmId: 'keygate0', pluginConfig: JSON.stringify(plugin), env });
}
for (const [name, m] of Object.entries(modules)) {
  if (!m.start()) throw new Error(`${name}: the module refused its configuration: ${JSON.stringify(m.logs)}`);
  const forwarded = m.serve(1, request);
  if (!forwarded) throw new Error(`${name}: the first request was not let through (local replies ${m.localReplies}, ${JSON.stringify(m.logs.slice(-3))})`);
  if (forwarded.some(([k]) => k === 'authorization') && name !== 'H1') throw new Error(`${name}: the credential went on`);
  if (m.unimplemented.size) console.error(`${name}: unimplemented host calls used: ${[...m.unimplemented].join(', ')}`);
}
// As `make bench` checks each configuration first: the token's identity forwarded, the token
// not; a request without it refused.
const identity = JSON.stringify(modules.C.serve(2, request).filter(([k]) => k.startsWith('x-keygate') || k === 'authorization'));
const expected = JSON.stringify([['x-keygate-subject', claims.sub], ['x-keygate-scopes', claims.scope], ['x-keygate-issuer', claims.iss]]);
if (identity !== expected) throw new Error(`C forwarded ${identity}, not ${expected}`);
const anonymous = request.filter(([k]) => k !== 'authorization');
for (const name of ['K8', 'C']) {
  const m = modules[name];
  if (m.serve(3, anonymous) !== null || m.lastLocalReply !== 401) throw new Error(`${name}: a request without a token was not refused with 401`);
}

if (proc.counting) {
  for (const [name, m] of Object.entries(modules)) {
    m.counts.clear();
    for (let i = 0; i < 1000; i++) m.serve(100 + i, request);
    console.log(`${name} host calls per request:`, [...m.counts].map(([k, v]) => `${k} ${v / 1000}`).join(', '));
  }
  process.exit(0);
}
if (only && !(only in modules)) {
  console.error(`--only ${only}: no such module (${Object.keys(modules).join(', ')})`);
  process.exit(2);
}
const names = only ? [only] : Object.keys(modules);
let contextId = 10;
/// ns per request over `n` requests back to back.
function hot(m, n) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) m.serve(contextId++, request);
  return Number(process.hrtime.bigint() - t0) / n;
}
// Cold: before each request a buffer is walked, as Envoy's own work between a filter's
// callbacks evicts the filter's code and data from the CPU's caches; only the request is timed.
const scratch = new Float64Array((EVICT_MIB * 1024 * 1024) / 8);
let sink = 0;
function cold(m, n) {
  let total = 0n;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < scratch.length; j += 8) sink += scratch[j]++;
    const t0 = process.hrtime.bigint();
    m.serve(contextId++, request);
    total += process.hrtime.bigint() - t0;
  }
  return Number(total) / n;
}

for (const name of names) hot(modules[name], PER_ROUND * 3); // let V8 tier the code up
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const pairs = [['K8', 'H1'], ['C', 'H1'], ['C', 'K8'], ['C', 'C0']];

/// Runs `rounds` rounds of `time(module, perRound)`, the modules alternating, and prints them.
function measure(title, time, rounds, perRound) {
  const results = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 ? [...names].reverse() : names;
    for (const name of order) results[name].push(time(modules[name], perRound));
  }
  console.log(`\n${title}: ${rounds} rounds of ${perRound} requests per module, alternating; ns per request (host calls in JavaScript included):\n`);
  console.log('| module | median | fastest round | slowest round |\n|---|---:|---:|---:|');
  for (const name of names) {
    const xs = results[name];
    console.log(`| ${name} | ${median(xs).toFixed(0)} | ${Math.min(...xs).toFixed(0)} | ${Math.max(...xs).toFixed(0)} |`);
  }
  const shown = pairs.filter(([a, b]) => names.includes(a) && names.includes(b));
  if (!shown.length) return;
  console.log('\n| difference | median of paired rounds | rounds above 0 | fastest against fastest |\n|---|---:|---:|---:|');
  for (const [a, b] of shown) {
    const d = results[a].map((x, i) => x - results[b][i]);
    const fastest = Math.min(...results[a]) - Math.min(...results[b]);
    console.log(`| ${a} − ${b} | ${median(d).toFixed(0)} | ${d.filter((x) => x > 0).length} of ${d.length} | ${fastest.toFixed(0)} |`);
  }
}

measure('Hot (requests back to back)', hot, ROUNDS, PER_ROUND);
if (EVICT_MIB > 0) {
  measure(`Cold (${EVICT_MIB} MiB walked before each request)`, cold, Math.max(11, ROUNDS >> 1), 500);
}
if (sink === 0.5) console.log(sink);

if (flag('--profile')) {
  // V8's sampling profiler over C's requests: where the module's own time goes, by function.
  const { Session } = await import('node:inspector/promises');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 20 });
  await session.post('Profiler.start');
  hot(modules.C, PER_ROUND * 5);
  const { profile } = await session.post('Profiler.stop');
  session.disconnect();
  console.log(`\n${summarise(profile)}`);
}

/// The profile's samples, by function: the share in the module's code, then the module's
/// functions with the most samples of their own. The profiler runs only around C's requests,
/// so every sample but V8's own bookkeeping is a request's (matching frames by name would
/// miss those V8 inlined into the loop before the profiler started).
function summarise(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const own = new Map();
  for (const id of profile.samples) own.set(id, (own.get(id) ?? 0) + 1);
  const bookkeeping = ['(root)', '(program)', '(idle)'];
  const isRequest = (id) => !bookkeeping.includes(byId.get(id).callFrame.functionName);
  let total = 0;
  let inWasm = 0;
  const functions = new Map();
  for (const [id, count] of own) {
    if (!isRequest(id)) continue;
    total += count;
    const frame = byId.get(id).callFrame;
    if (!frame.url.startsWith('wasm')) continue;
    inWasm += count;
    const name = readable(frame.functionName);
    functions.set(name, (functions.get(name) ?? 0) + count);
  }
  const lines = [`C's requests under V8's sampling profiler: ${total} samples, ${(100 * inWasm / total).toFixed(0)}% in the module's code (the rest in the JavaScript host). A \`wasm-to-js:<signature>\` line is V8's wrapper into the host for every import of that signature, named after one of them.`, '', '| share of C\'s request | the module\'s function (own samples) |', '|---:|---|'];
  for (const [name, count] of [...functions].sort((a, b) => b[1] - a[1]).slice(0, 30)) {
    lines.push(`| ${(100 * count / total).toFixed(1)}% | \`${name}\` |`);
  }
  return lines.join('\n');
}

/// A Rust symbol's last path segments, or the name as it is (a wrapper, a C function).
function readable(symbol) {
  const legacy = /^_ZN(.*)17h[0-9a-f]{16}E$/.exec(symbol);
  if (legacy) {
    const parts = [];
    for (let s = legacy[1]; s.length;) {
      const digits = /^\d+/.exec(s);
      if (!digits) break;
      const length = Number(digits[0]);
      parts.push(s.slice(digits[0].length, digits[0].length + length));
      s = s.slice(digits[0].length + length);
    }
    return parts.slice(-3).join('::').replaceAll('$LT$', '<').replaceAll('$GT$', '>').replaceAll('$u20$', ' ').replaceAll('..', '::');
  }
  if (symbol.startsWith('_R')) {
    // v0 mangling: the identifiers are `<length><name>`; the last ones name the function.
    // The crates' disambiguators (`Cs<base-62>_`) hold digits: dropped first.
    const bare = symbol.replace(/Cs[0-9A-Za-z]*_/g, 'C');
    const names = [];
    for (let at = 2; at < bare.length;) {
      const digits = /^\d+/.exec(bare.slice(at));
      if (!digits) {
        at += 1;
        continue;
      }
      at += digits[0].length;
      if (bare[at] === '_') at += 1; // the separator before a name that starts with `_`
      names.push(bare.slice(at, at + Number(digits[0])));
      at += Number(digits[0]);
    }
    return names.slice(-2).join('::') || symbol;
  }
  return symbol;
}
