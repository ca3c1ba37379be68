// A quick check of the built policies outside the operator: every case in cases.json runs
// against target/policies/<name>.wasm. Components run through `jco transpile` (from the
// componentize-js install), core modules through Node's WebAssembly with an empty WASI.
// The operator's own tests run the same kind of table through the real wasmtime host; this
// one exists so a policy author can check a change in seconds.
//
// Usage: COMPONENTIZE_JS_MODULES=… node policies/test/run.mjs [POLICY…]  (../build.sh --test)
import { readFile, mkdtemp } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const built = join(root, 'target', 'policies');
const jco = join(process.env.COMPONENTIZE_JS_MODULES, '@bytecodealliance', 'jco', 'dist', 'jco.js');

const U64 = new Set(['backlog', 'reserved', 'timestampMs', 'cpuMillis', 'cpuRequestMillis', 'memoryBytes', 'memoryRequestBytes']);

// The CORE-ABI JSON form of an input, turned into jco's values: u64 as BigInt, null as
// undefined, settings as a list of pairs.
function toComponent(value, key) {
  if (value === null) return undefined;
  if (key === 'settings') return Object.entries(value);
  if (Array.isArray(value)) return value.map((v) => toComponent(v));
  if (typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toComponent(v, k)]));
  }
  if (U64.has(key) && typeof value === 'number') return BigInt(value);
  return value;
}

// The `window` interface as the host implements it (host/src/policy/component.rs, `Columns`):
// one list per quantity over the history, then the current sample, of the input `inputOf()`
// returns (the call in progress). Cases give few samples, so no cut applies.
function windowOf(inputOf) {
  const samples = () => [...(inputOf().history ?? []), inputOf().current];
  const sum = (xs) => xs.reduce((a, x) => a + BigInt(x ?? 0), 0n);
  const u64 = (f) => () => BigUint64Array.from(samples(), f);
  const u32 = (f) => () => Uint32Array.from(samples(), f);
  return {
    timestampsMs: u64((s) => BigInt(s.timestampMs)),
    replicas: u32((s) => s.replicas),
    backlog: u64((s) => sum(s.queues.map((q) => q.backlog))),
    reserved: u64((s) => sum(s.queues.map((q) => q.reserved))),
    readyPods: u32((s) => s.pods.filter((p) => p.ready).length),
    cpuMillis: u64((s) => sum(s.pods.map((p) => p.cpuMillis))),
    memoryBytes: u64((s) => sum(s.pods.map((p) => p.memoryBytes))),
    activeTasks: u32((s) => Number(sum(s.pods.map((p) => p.activeTasks)))),
  };
}

async function loadComponent(name, wasm) {
  const out = await mkdtemp(join(tmpdir(), `policy-${name}-`));
  execFileSync(process.execPath, [jco, 'transpile', wasm, '--instantiation', 'async', '--name', name, '-o', out], { stdio: 'ignore' });
  const mod = await import(pathToFileURL(join(out, `${name}.js`)).href);
  const logs = [];
  const host = { log: (level, message) => logs.push(`${level}: ${message}`) };
  // The input of the call in progress: the window's functions read it.
  let current = null;
  const window = windowOf(() => current);
  const instance = await mod.instantiate(
    async (file) => WebAssembly.compile(await readFile(join(out, file))),
    { 'celery:autoscaler/host': host, 'celery:autoscaler/types': {}, 'celery:autoscaler/window': window },
  );
  const policy = instance.policy ?? Object.entries(instance).find(([k]) => k.startsWith('celery:autoscaler/policy@'))?.[1];
  const call = (f) => {
    try {
      return { ok: f() };
    } catch (e) {
      if (e && 'payload' in e) return { err: String(e.payload) };
      throw e;
    }
  };
  return {
    decide: (input) => {
      current = input;
      return call(() => policy.decide(toComponent(input)));
    },
    validate: (settings) => call(() => policy.validateSettings(Object.entries(settings))),
  };
}

async function loadCore(wasm) {
  const module = await WebAssembly.compile(await readFile(wasm));
  const wasi = {};
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module === 'wasi_snapshot_preview1') wasi[imp.name] = () => 52; // ENOSYS
  }
  // NB: Go's runtime dies ("nanotime returning zero") if the clock reads 0: a frozen clock
  // must be frozen at a real time, as the host does (the sample's timestamp).
  wasi.clock_time_get = (_id, _precision, out) => {
    new DataView(memory.buffer).setBigUint64(out, 1764000000000000000n, true);
    return 0;
  };
  wasi.fd_prestat_get = () => 8; // EBADF: no preopened directories
  wasi.random_get = () => 0;
  wasi.args_sizes_get = wasi.environ_sizes_get = (a, b) => {
    const view = new DataView(memory.buffer);
    view.setUint32(a, 0, true);
    view.setUint32(b, 0, true);
    return 0;
  };
  wasi.args_get = wasi.environ_get = () => 0;
  wasi.fd_write = () => 0;
  let memory;
  const call = (name, json) => {
    // A fresh instance per call, as the host does.
    const inst = new WebAssembly.Instance(module, { wasi_snapshot_preview1: wasi, celery_policy: { log() {} } });
    memory = inst.exports.memory;
    inst.exports._initialize?.();
    const bytes = new TextEncoder().encode(JSON.stringify(json));
    const ptr = inst.exports.celery_policy_alloc(bytes.length);
    new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
    const packed = BigInt.asUintN(64, inst.exports[name](ptr, bytes.length));
    const outPtr = Number(packed >> 32n);
    const outLen = Number(packed & 0xffffffffn);
    const out = JSON.parse(new TextDecoder().decode(new Uint8Array(memory.buffer, outPtr, outLen)));
    return 'error' in out ? { err: out.error } : { ok: out };
  };
  return {
    decide: (input) => call('celery_policy_decide', input),
    validate: (settings) => call('celery_policy_validate_settings', settings),
  };
}

const base = JSON.parse(await readFile(join(here, 'base-input.json'), 'utf8'));
const cases = JSON.parse(await readFile(join(here, 'cases.json'), 'utf8'));
const only = process.argv.slice(2);
let passed = 0;
let failed = 0;
const loaded = {};
for (const c of cases) {
  if (only.length && !only.includes(c.policy)) continue;
  if (!loaded[c.policy]) {
    const meta = JSON.parse(await readFile(join(built, `${c.policy}.json`), 'utf8'));
    const wasm = join(built, `${c.policy}.wasm`);
    loaded[c.policy] = meta.interface === 'core' ? await loadCore(wasm) : await loadComponent(c.policy, wasm);
  }
  const p = loaded[c.policy];
  const label = `${c.policy}: ${c.name}`;
  let got;
  if (c.validate !== undefined) {
    got = p.validate(c.validate);
  } else {
    const input = structuredClone(base);
    for (const [k, v] of Object.entries(c.input ?? {})) input[k] = v;
    got = p.decide(input);
  }
  let ok;
  if (c.error !== undefined) ok = got.err !== undefined && got.err.includes(c.error);
  else if (c.validate !== undefined) ok = got.err === undefined;
  else if (c.declined) ok = got.ok !== undefined && got.ok.reason.startsWith('decline:');
  else ok = got.ok !== undefined && !got.ok.reason.startsWith('decline:') && got.ok.replicas === c.replicas;
  const shown = got.err !== undefined ? `error: ${got.err}` : c.validate !== undefined ? 'ok' : `${got.ok.replicas} (${got.ok.reason})`;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${label} → ${shown}`);
  ok ? passed++ : failed++;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
