// Reads a V8 .cpuprofile (node --cpu-prof) and tells, for a window of time, how busy the profiled thread was and
// which share of that busy time was spent in the key-service client: the client's own modules (kms-api/), Node's
// HTTP client (node:_http_*) and the fetch implementation (undici, in node:internal/deps).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber?: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A frame of the key-service client. */
const CLIENT_FRAME = /\/kms-api\/|node:_http_(client|agent|outgoing|incoming|common)|internal\/deps\/undici/;
const IDLE = new Set(['(idle)', '(program)', '(garbage collector)']);

/**
 * The broker thread's profile in `dir`: node names each CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile, and the
 * broker runs on a worker thread (id above 0) unless it was started without one (then the main thread's, id 0).
 */
export function brokerThreadProfile(dir: string): string {
  const threadOf = (f: string) => Number(f.split('.').at(-3));
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}`);
  return join(dir, files.sort((a, b) => threadOf(b) - threadOf(a))[0]!);
}

export interface WindowShare {
  /** Share of the window the thread was running JavaScript or native code (not idle). */
  busy: number;
  /** Share of that busy time with a key-service client frame on the stack. */
  client: number;
}

/**
 * Busy and client shares between `fromUs` and `toUs`, microseconds on the monotonic clock the profile's timestamps
 * use (process.hrtime in any process of this machine).
 */
export function windowShare(file: string, fromUs: number, toUs: number): WindowShare {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const isClient = new Map<number, boolean>();
  const clientStack = (id: number): boolean => {
    const known = isClient.get(id);
    if (known !== undefined) return known;
    const n = byId.get(id)!;
    const up = parent.get(id);
    const v = CLIENT_FRAME.test(n.callFrame.url) || (up !== undefined && clientStack(up));
    isClient.set(id, v);
    return v;
  };
  let t = p.startTime;
  let total = 0;
  let busy = 0;
  let client = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0; // the time until the next sample is this sample's
    t += p.timeDeltas[i]!;
    if (t < fromUs || t > toUs) continue;
    total += dt;
    const node = byId.get(p.samples[i]!)!;
    if (IDLE.has(node.callFrame.functionName)) continue;
    busy += dt;
    if (clientStack(node.id)) client += dt;
  }
  return { busy: total ? busy / total : 0, client: busy ? client / busy : 0 };
}

/** The main thread's profile in `dir` (thread id 0): the key service's, or the load generator's. */
export function mainThreadProfile(dir: string): string {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile') && f.split('.').at(-3) === '0');
  if (!file) throw new Error(`no main-thread .cpuprofile in ${dir}`);
  return join(dir, file);
}

/**
 * The `n` functions with the most self time between `fromUs` and `toUs`, each as its share of the thread's busy time
 * there, named `function file:line` (file relative to dist/ or node_modules/).
 */
export function topFunctions(file: string, fromUs: number, toUs: number, n: number): Array<[string, number]> {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((x) => [x.id, x]));
  const self = new Map<string, number>();
  let busy = 0;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0;
    t += p.timeDeltas[i]!;
    if (t < fromUs || t > toUs) continue;
    const f = byId.get(p.samples[i]!)!.callFrame;
    if (f.functionName === '(idle)') continue;
    busy += dt;
    const where = f.url.replace(/^.*\/(dist|node_modules)\//, '').replace(/^file:\/\//, '');
    const name = `${f.functionName || '(anonymous)'}${where ? ` ${where}:${f.lineNumber ?? 0}` : ''}`;
    self.set(name, (self.get(name) ?? 0) + dt);
  }
  return [...self]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, us]) => [name, busy ? us / busy : 0]);
}

/** Now on the profile's clock, in microseconds. */
export const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);
