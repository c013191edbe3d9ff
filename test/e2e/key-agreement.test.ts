// Model-based test of the key agreement (issue #14, docs/PROTOCOL.md §9): random sequences of connects, publishes,
// network and power losses, broker and key-service restarts and outages, intruders with the device's token, replayed
// and forged envelopes, library reconnects and resends, run against the real chip emulator, brokers and key
// service. After every step: no key serves two sessions, no (key, seq) repeats, keys are spent only within the
// bound; at the end of every sequence the honest device's next session is accepted.
//
// QKEY_MODEL_RUNS: number of sequences (default 1,000, about 70 s of CPU on a shared 2-core machine). A failure prints the line that replays it
// (QKEY_MODEL_SEED, QKEY_MODEL_PATH, QKEY_MODEL_REPLAY_PATH). QKEY_MODEL_FRESH=1: a new device for every sequence.
// QKEY_MODEL_ONLY=Step,Step: only those steps. QKEY_MODEL_DEBUG=1: timings and how often each step and outcome ran.
import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseEnvelope } from '../../protocol/index.js';
import {
  type Connection,
  ConnectRefused,
  type CrashPoint,
  ModelDevice,
  PowerLoss,
  type PublishOutcome,
} from '../helpers/model-device.js';
import { type BrokerName, BROKERS, ModelWorld } from '../helpers/model-world.js';

const RUNS = Number(process.env.QKEY_MODEL_RUNS ?? 1000);
const MAX_COMMANDS = Number(process.env.QKEY_MODEL_MAX_COMMANDS ?? 12);
/** Uplink keys one sequence can take: two per step (a refusal and the new session after it), and the probe. */
const KEYS_PER_SEQUENCE = 2 * MAX_COMMANDS + 2;
const UP_KEYS = 4 * KEYS_PER_SEQUENCE;
const DOWN_KEYS = 4 * KEYS_PER_SEQUENCE;

/** The documented bound (docs/PROTOCOL.md §9.3): what one broker connection (its session id) may claim. */
const BOUND = {
  /** Uplink keys per broker session: the key of its first envelope, plus rotations (none in these sequences). */
  uplinkPerSession: 1,
  /** Downlink keys per broker session that carried a command (plus a prefetch near rotation, not reached here). */
  downlinkPerSession: 1,
};

/**
 * What the steps' preconditions look at: the device's state as observed after the previous step (a step that could
 * only be a no-op is not drawn).
 */
interface Model {
  steps: number;
  /** The firmware has an open connection. */
  connected: boolean;
  /** The chip has a session (a library reconnect continues it). */
  chipSession: boolean;
}

interface Real {
  world: ModelWorld;
  device: ModelDevice;
  /** What happened so far, printed with a failure. */
  trace: string[];
}

type Cmd = fc.AsyncCommand<Model, Real>;

let world: ModelWorld;
let runs = 0;
let devices = 0;
let current: ModelDevice | undefined;
const served = new WeakMap<ModelDevice, number>();

/**
 * A device serves sequences until its pool runs low or a sequence fails: a fill costs more than a whole sequence,
 * and a device that has passed sequences (every connection closed, the chip reset in between) is a long-lived
 * device, not a weaker starting point. QKEY_MODEL_FRESH=1 gives every sequence a new device.
 */
async function deviceForNextSequence(): Promise<ModelDevice> {
  if (current && (process.env.QKEY_MODEL_FRESH === '1' || runsLow(current))) await retire(current);
  if (current) {
    await current.reset();
    return current;
  }
  current = await ModelDevice.create(world, `model-${devices++}`, UP_KEYS, DOWN_KEYS);
  served.set(current, 0);
  return current;
}

/** Fewer keys left, on the chip or at the key service, than one sequence may take. */
function runsLow(d: ModelDevice): boolean {
  const pool = world.pool(d.deviceId);
  const chip = d.chip.status();
  return (
    Math.min(pool.up, chip.uplinkKeys) < KEYS_PER_SEQUENCE || Math.min(pool.down, chip.downlinkKeys) < KEYS_PER_SEQUENCE
  );
}

async function retire(d: ModelDevice): Promise<void> {
  if (current === d) current = undefined;
  await d.close();
}

const timings: number[][] = [];
/** How often each step ran, by outcome (printed with QKEY_MODEL_DEBUG=1): what the sequences exercised. */
const coverage = new Map<string, number>();
beforeAll(async () => {
  world = await ModelWorld.start();
});
afterAll(async () => {
  if (current) await retire(current);
  await world?.stop();
});

// --- the honest device ------------------------------------------------------------------------------------------

/**
 * The firmware's publish: on its connection if it has one (else a new connection, new chip session); on a refusal
 * it reconnects with a new chip session and reseals, and that must be accepted. A refusal itself is allowed only
 * on a library reconnect whose key another broker (or an earlier run of this one) already holds.
 */
async function publishHonestly(r: Real, broker: BrokerName, qos: 0 | 1, count = 1): Promise<string> {
  const d = r.device;
  let c = d.current?.client.connected ? d.current : undefined;
  const notes: string[] = [];
  if (!c) {
    c = await d.connectHonest(broker);
    notes.push(`connected to ${broker}`);
  }
  const heldBefore = holderOf(r, d.chip.status().session?.keyIndex ?? undefined);
  const first = await d.publish(c, qos, count);
  if (first.kind === 'accepted') return [...notes, `accepted on ${c.kind} ${c.broker}`].join(', ');
  notes.push(`${c.kind} connection on ${c.broker}: ${describe(first)}`);
  await r.world.settle(d.peers());
  d.prune();
  const retry = await d.connectHonest(c.broker);
  const second = await d.publish(retry, qos, count);
  if (second.kind !== 'accepted')
    throw new Error(
      `the honest device's new session was ${describe(second)} on ${retry.broker} after ${notes.join(', ')}`,
    );
  // A refusal is allowed only on a library reconnect whose session key is held elsewhere (another broker, or an
  // earlier run of this one): the firmware's own new session, and a reconnect to the broker that holds the key,
  // must be accepted (docs/PROTOCOL.md §9).
  if (first.kind === 'refused' && !(c.kind === 'resumed' && heldBefore && !sameBroker(heldBefore, c, r)))
    throw new Error(`a ${c.kind} session was refused: ${notes.join(', ')}`);
  return [...notes, `new session accepted on ${retry.broker}`].join(', ');
}

function describe(o: PublishOutcome): string {
  return o.kind === 'refused' && o.status ? `refused (${o.status})` : o.kind;
}

/** Which broker (and run of it) holds key `index`, as far as the device has seen. */
function holderOf(r: Real, index: number | undefined) {
  return index === undefined ? undefined : r.device.keyHolder.get(index);
}

function sameBroker(h: { broker: BrokerName; generation: number }, c: Connection, r: Real): boolean {
  return h.broker === c.broker && h.generation === r.world.generation(c.broker);
}

/** Ends with the device reset if a power loss was armed and hit; returns what happened. */
async function withPowerLoss(r: Real, f: () => Promise<string>): Promise<string> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof PowerLoss) return err.message;
    throw err;
  } finally {
    r.device.disarm();
  }
}

function observe(m: Model, d: ModelDevice): void {
  m.connected = d.current?.client.connected === true;
  m.chipSession = d.hasChipSession;
}

// --- commands ---------------------------------------------------------------------------------------------------

abstract class Step implements Cmd {
  check(_m: Readonly<Model>): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    m.steps++;
    const what = await this.act(r);
    r.trace.push(`${this.toString()}: ${what}`);
    const kind = `${this.constructor.name}: ${what.replace(/\d+/g, 'n').replace(/[A-B]\b/g, 'X')}`;
    coverage.set(kind, (coverage.get(kind) ?? 0) + 1);
    await r.world.settle(r.device.peers());
    r.device.prune();
    checkInvariants(r);
    observe(m, r.device);
  }
  abstract act(r: Real): Promise<string>;
  abstract toString(): string;
}

class Connect extends Step {
  constructor(
    readonly broker: BrokerName,
    readonly will: boolean,
  ) {
    super();
  }
  act(r: Real) {
    return withPowerLoss(r, async () => (await r.device.connectHonest(this.broker, this.will), 'connected'));
  }
  toString() {
    return `Connect(${this.broker}${this.will ? ', will' : ''})`;
  }
}

/** The firmware publishes `count` messages back to back (several name a new key before its claim is done). */
class Publish extends Step {
  constructor(
    readonly broker: BrokerName,
    readonly qos: 0 | 1,
    readonly count: number,
  ) {
    super();
  }
  act(r: Real) {
    return publishHonestly(r, this.broker, this.qos, this.count);
  }
  toString() {
    return `Publish(${this.broker}, qos ${this.qos}${this.count > 1 ? `, ${this.count} messages` : ''})`;
  }
}

/** A power loss at a chip crash point during the firmware's next publish, or while idle. */
class ChipPowerLoss extends Step {
  constructor(
    readonly point: CrashPoint | 'idle',
    readonly broker: BrokerName,
  ) {
    super();
  }
  act(r: Real) {
    if (this.point === 'idle') {
      r.device.powerLoss();
      return Promise.resolve('reset');
    }
    r.device.arm(this.point);
    return withPowerLoss(r, () => publishHonestly(r, this.broker, 1));
  }
  toString() {
    return `ChipPowerLoss(${this.point}, ${this.broker})`;
  }
}

class Disconnect extends Step {
  async act(r: Real) {
    const c = r.device.current;
    if (!c?.client.connected) return 'not connected';
    await r.device.disconnect(c);
    return `disconnected from ${c.broker}`;
  }
  override check(m: Readonly<Model>) {
    return m.connected;
  }
  toString() {
    return 'Disconnect';
  }
}

/** The network goes away after CONNACK: the socket dies, no DISCONNECT. */
class NetworkLoss extends Step {
  async act(r: Real) {
    const c = r.device.current;
    if (!c?.client.connected) return 'not connected';
    c.socket.destroy();
    if (!c.will) return `lost ${c.broker}`;
    // The will's key was claimed when the connection was accepted (docs/PROTOCOL.md §9.5): it must be published.
    await r.device.arrival(c.will);
    return `lost ${c.broker}, will published`;
  }
  override check(m: Readonly<Model>) {
    return m.connected;
  }
  toString() {
    return 'NetworkLoss';
  }
}

/** The network goes away while the broker is authenticating the CONNECT (before CONNACK). */
class LossBeforeConnack extends Step {
  constructor(
    readonly broker: BrokerName,
    readonly newSession: boolean,
  ) {
    super();
  }
  act(r: Real) {
    return withPowerLoss(r, async () => {
      await r.device.connectLostBeforeConnack(this.broker, this.newSession);
      return 'lost';
    });
  }
  toString() {
    return `LossBeforeConnack(${this.broker}, ${this.newSession ? 'new session' : 'no new session'})`;
  }
}

/** The MQTT library reconnects by itself after a network loss: the chip's session goes on. */
/**
 * A library reconnect after a network loss: the chip's session goes on, and the CONNECT is sent again as it was,
 * with the session's will. It may be refused (CONNACK 5, docs/PROTOCOL.md §9.5) only if that will was published
 * already, or discarded by a clean DISCONNECT, or its key is held by another broker (or an earlier run of this one);
 * the firmware then begins a new session, which must be accepted.
 */
async function resume(r: Real, broker: BrokerName): Promise<{ c?: Connection; note: string }> {
  const d = r.device;
  d.current?.socket.destroy();
  await r.world.settle(d.peers());
  const willKey = d.willKeyIndex;
  try {
    return { c: await d.reconnectResumed(broker), note: 'reconnected' };
  } catch (err) {
    if (!(err instanceof ConnectRefused) || willKey === undefined) throw err;
    const published = r.world.accepted.some(
      (a) => a.deviceId === d.deviceId && a.direction === 'will' && a.keyIndex === willKey,
    );
    const holder = holderOf(r, willKey);
    const target = { broker, generation: r.world.generation(broker) };
    const elsewhere = holder && !(holder.broker === target.broker && holder.generation === target.generation);
    if (!published && !d.willDiscarded && !elsewhere)
      throw new Error(`a library reconnect with an unpublished will held by ${broker} was refused: ${err.message}`);
    await d.connectHonest(broker, true);
    return { note: `${err.message}; new session with a new will connected` };
  }
}

class LibraryReconnect extends Step {
  constructor(readonly broker: BrokerName) {
    super();
  }
  async act(r: Real) {
    return (await resume(r, this.broker)).note;
  }
  override check(m: Readonly<Model>) {
    return m.chipSession;
  }
  toString() {
    return `LibraryReconnect(${this.broker})`;
  }
}

/**
 * The MQTT library reconnects by itself and resends the QoS 1 message it had in flight, unchanged, with DUP set
 * [MQTT-3.3.1-1]: the broker may have passed it on already.
 */
class LibraryResend extends Step {
  constructor(readonly broker: BrokerName) {
    super();
  }
  async act(r: Real) {
    const d = r.device;
    const last = d.lastSentInSession();
    if (!last) return 'nothing in flight';
    const { c, note } = await resume(r, this.broker);
    if (!c) return note;
    const h = parseEnvelope(last.envelope);
    const holder = holderOf(r, h.keyIndex);
    const outcome = await d.inject(c, last.topic, last.envelope, 1, true);
    // The broker that holds the key hands it to the new connection (docs/PROTOCOL.md §9.1): no refusal there.
    if (outcome === 'refused' && holder && sameBroker(holder, c, r))
      throw new Error(`a QoS 1 resend to ${c.broker}, which holds key ${h.keyIndex}, was refused`);
    return `resent key ${h.keyIndex} seq ${h.seq}: ${outcome}`;
  }
  override check(m: Readonly<Model>) {
    return m.chipSession;
  }
  toString() {
    return `LibraryResend(${this.broker})`;
  }
}

class BrokerCrash extends Step {
  constructor(readonly broker: BrokerName) {
    super();
  }
  async act(r: Real) {
    await r.world.restartBroker(this.broker);
    return 'restarted';
  }
  toString() {
    return `BrokerCrash(${this.broker})`;
  }
}

class KmsRestart extends Step {
  async act(r: Real) {
    await r.world.restartKms();
    return 'restarted';
  }
  toString() {
    return 'KmsRestart';
  }
}

/**
 * The key service is down while the device publishes: a key the broker holds keeps working, a new one is refused
 * (kms_unavailable). Once the key service is back, the device's new session must be accepted.
 */
class KmsOutage extends Step {
  constructor(
    readonly broker: BrokerName,
    readonly qos: 0 | 1,
  ) {
    super();
  }
  async act(r: Real) {
    const d = r.device;
    await r.world.stopKms();
    let during: PublishOutcome;
    let c: Connection;
    let held: ReturnType<typeof holderOf>;
    try {
      // A CONNECT without a will never asks the key service (docs/PROTOCOL.md §9.1).
      c = d.current?.client.connected ? d.current : await d.connectHonest(this.broker);
      held = holderOf(r, d.chip.status().session?.keyIndex ?? undefined);
      during = await d.publish(c, this.qos);
    } finally {
      await r.world.resumeKms();
    }
    if (during.kind === 'accepted') return `accepted during the outage on ${c.kind} ${c.broker}`;
    if (c.kind !== 'intruder' && held && sameBroker(held, c, r))
      throw new Error(`a key held by ${c.broker} stopped working during a key-service outage: ${describe(during)}`);
    await r.world.settle(d.peers());
    d.prune();
    const retry = await d.connectHonest(this.broker);
    const after = await d.publish(retry, this.qos);
    if (after.kind !== 'accepted')
      throw new Error(`after the outage the device's new session was ${describe(after)} on ${this.broker}`);
    return `${describe(during)} during the outage; new session accepted after it`;
  }
  toString() {
    return `KmsOutage(${this.broker}, qos ${this.qos})`;
  }
}

/**
 * The application sends `count` commands at once to the device on its current connection (the later ones arrive
 * while the session's first downlink key is being claimed).
 */
class Command extends Step {
  constructor(readonly count: number) {
    super();
  }
  async act(r: Real) {
    const c = r.device.current;
    if (!c?.client.connected) return 'not connected';
    return `command ${await r.device.command(c, this.count)} on ${c.broker}`;
  }
  override check(m: Readonly<Model>) {
    return m.connected;
  }
  toString() {
    return `Command(${this.count})`;
  }
}

type IntruderAct = 'stay' | 'leave' | 'replay' | 'replay-dup' | 'forge-random' | 'forge-future';

/** Someone else connects with the device's token (taking over its connection on that broker) and acts. */
class Intruder extends Step {
  constructor(
    readonly broker: BrokerName,
    readonly what: IntruderAct,
    readonly pick: number,
  ) {
    super();
  }
  async act(r: Real) {
    const d = r.device;
    const c = await d.connectIntruder(this.broker);
    const topic = `devices/${d.deviceId}/up/m`;
    switch (this.what) {
      case 'stay':
        return 'connected';
      case 'leave':
        await c.client.endAsync(false);
        return 'left';
      case 'replay':
      case 'replay-dup': {
        // A captured envelope sent again; with DUP set it looks like a QoS 1 resend [MQTT-3.3.1-1] (the flag is
        // not authenticated).
        if (d.sent.length === 0) return 'nothing to replay';
        const s = d.sent[this.pick % d.sent.length]!;
        const h = parseEnvelope(s.envelope);
        const outcome = await d.inject(c, s.topic, s.envelope, 1, this.what === 'replay-dup');
        return `replayed key ${h.keyIndex} seq ${h.seq}: ${outcome}`;
      }
      case 'forge-random': {
        const outcome = await d.inject(c, topic, ModelDevice.forged(this.pick, this.pick * 7, 16).subarray(2), 0);
        if (outcome === 'accepted') throw new Error('random bytes were accepted as an envelope');
        return outcome;
      }
      case 'forge-future': {
        const index = d.nextUplinkIndex + (this.pick % 3);
        const outcome = await d.inject(c, topic, ModelDevice.forged(index, this.pick, 16), 1);
        if (outcome === 'accepted') throw new Error(`a forged envelope naming key ${index} was accepted`);
        return `forged key ${index}: ${outcome}`;
      }
    }
  }
  toString() {
    return `Intruder(${this.broker}, ${this.what}, ${this.pick})`;
  }
}

// --- checks -----------------------------------------------------------------------------------------------------

/** What the checks have read so far of one device's records (they only grow), so each step reads only news. */
interface Ledger {
  acceptedRead: number;
  accepted: Set<string>;
  auditRead: number;
  claimedBy: Map<number, string | null>;
  perSession: Map<string, { up: number; down: number }>;
}
const ledgers = new WeakMap<ModelDevice, Ledger>();

/** After every step: no key serves two sessions, no (key, seq) pair repeats, keys spent only within the bound. */
function checkInvariants(r: Real): void {
  const d = r.device;
  const where = () => `\n  after: ${r.trace.join('\n         ')}`;
  let l = ledgers.get(d);
  if (!l) {
    l = { acceptedRead: 0, accepted: new Set(), auditRead: 0, claimedBy: new Map(), perSession: new Map() };
    ledgers.set(d, l);
  }
  // No (direction, key, seq) accepted twice, and only what the chip sealed.
  const accepted = r.world.accepted;
  for (; l.acceptedRead < accepted.length; l.acceptedRead++) {
    const a = accepted[l.acceptedRead]!;
    if (a.deviceId !== d.deviceId) continue;
    const id = `${a.direction}/${a.keyIndex}/${a.seq}`;
    if (l.accepted.has(id)) throw new Error(`(${id}) was accepted twice${where()}`);
    l.accepted.add(id);
    if (!d.sealed.has(id)) throw new Error(`(${id}) was accepted but the chip never sealed it${where()}`);
  }
  // Key service side: every key claimed once, by one session; uplink keys only once the device used them.
  const { claims, last } = r.world.claimsSince(d.deviceId, l.auditRead);
  l.auditRead = last;
  for (const c of claims) {
    for (const i of c.keyIndices) {
      if (l.claimedBy.has(i)) throw new Error(`key ${i} was claimed twice${where()}`);
      l.claimedBy.set(i, c.session);
      if (c.kind === 'dec' && !d.sealedKeys.has(i))
        throw new Error(`uplink key ${i} was claimed before the device used it${where()}`);
    }
    const session = `${c.actor}/${c.session}`;
    const n = l.perSession.get(session) ?? { up: 0, down: 0 };
    if (c.kind === 'dec') n.up += c.keyIndices.length;
    else n.down += c.keyIndices.length;
    l.perSession.set(session, n);
    if (n.up > BOUND.uplinkPerSession)
      throw new Error(`broker session ${session} claimed ${n.up} uplink keys${where()}`);
    if (n.down > BOUND.downlinkPerSession)
      throw new Error(`broker session ${session} claimed ${n.down} downlink keys${where()}`);
  }
  const downSessions = [...l.perSession.values()].filter((n) => n.down > 0).length;
  if (downSessions > d.commanded.size)
    throw new Error(
      `${downSessions} broker sessions claimed downlink keys; ${d.commanded.size} connections had commands${where()}`,
    );
}

/** The honest device's next session must be accepted (on the broker the sequence names). */
async function probe(r: Real, brokers: readonly BrokerName[]): Promise<void> {
  const d = r.device;
  for (const broker of brokers) {
    const c = await d.connectHonest(broker);
    const outcome = await d.publish(c, 1);
    r.trace.push(`probe ${broker}: ${outcome.kind}`);
    if (outcome.kind !== 'accepted') {
      throw new Error(
        `the honest device's next session on ${broker} was ${describe(outcome)}\n  after: ${r.trace.join('\n         ')}`,
      );
    }
    await r.world.settle(d.peers());
    d.prune();
    checkInvariants(r);
  }
}

// --- the property -----------------------------------------------------------------------------------------------

const broker = fc.constantFrom<BrokerName>(...BROKERS);
/** QKEY_MODEL_ONLY=Connect,Publish,... narrows the steps drawn (to study one interaction). */
const only = process.env.QKEY_MODEL_ONLY?.split(',');
/** Each step with its weight: a restart costs as much as a whole sequence (~100-250 ms), so it is drawn rarely. */
const steps: Record<string, { weight: number; arbitrary: fc.Arbitrary<Cmd> }> = {
  Connect: { weight: 8, arbitrary: fc.tuple(broker, fc.boolean()).map(([b, w]) => new Connect(b, w)) },
  Publish: {
    weight: 16,
    arbitrary: fc
      .tuple(broker, fc.constantFrom<0 | 1>(0, 1), fc.constantFrom(1, 3))
      .map(([b, q, n]) => new Publish(b, q, n)),
  },
  ChipPowerLoss: {
    weight: 8,
    arbitrary: fc
      .tuple(fc.constantFrom<CrashPoint | 'idle'>('idle', 'after-take-key', 'after-reserve'), broker)
      .map(([p, b]) => new ChipPowerLoss(p, b)),
  },
  Disconnect: { weight: 4, arbitrary: fc.constant(new Disconnect()) },
  NetworkLoss: { weight: 8, arbitrary: fc.constant(new NetworkLoss()) },
  LossBeforeConnack: {
    weight: 8,
    arbitrary: fc.tuple(broker, fc.boolean()).map(([b, s]) => new LossBeforeConnack(b, s)),
  },
  LibraryReconnect: { weight: 12, arbitrary: broker.map((b) => new LibraryReconnect(b)) },
  LibraryResend: { weight: 6, arbitrary: broker.map((b) => new LibraryResend(b)) },
  BrokerCrash: { weight: 2, arbitrary: broker.map((b) => new BrokerCrash(b)) },
  KmsRestart: { weight: 1, arbitrary: fc.constant(new KmsRestart()) },
  KmsOutage: {
    weight: 1,
    arbitrary: fc.tuple(broker, fc.constantFrom<0 | 1>(0, 1)).map(([b, q]) => new KmsOutage(b, q)),
  },
  Command: { weight: 8, arbitrary: fc.constantFrom(1, 3).map((n) => new Command(n)) },
  Intruder: {
    weight: 12,
    arbitrary: fc
      .tuple(
        broker,
        fc.constantFrom<IntruderAct>('stay', 'leave', 'replay', 'replay-dup', 'forge-random', 'forge-future'),
        fc.nat(1000),
      )
      .map(([b, w, p]) => new Intruder(b, w, p)),
  },
};
const commands = fc.commands(
  [
    fc.oneof(
      ...Object.entries(steps)
        .filter(([name]) => !only || only.includes(name))
        .map(([, s]) => s),
    ),
  ],
  {
    maxCommands: MAX_COMMANDS,
    // The shrunk command list of a reported failure (fast-check prints it as /*replayPath="..."*/).
    ...(process.env.QKEY_MODEL_REPLAY_PATH !== undefined && { replayPath: process.env.QKEY_MODEL_REPLAY_PATH }),
  },
);

function replayParameters(): fc.Parameters<[Iterable<Cmd>, BrokerName]> {
  const seed = process.env.QKEY_MODEL_SEED;
  const path = process.env.QKEY_MODEL_PATH;
  return {
    numRuns: RUNS,
    ...(seed !== undefined && { seed: Number(seed) }),
    ...(path !== undefined && { path }),
  };
}

const DEBUG = process.env.QKEY_MODEL_DEBUG === '1';

/** One sequence: a device (reused while it passes), the steps, then the probe of its next session. */
async function sequence(cmds: Iterable<Cmd>, probeOn: BrokerName): Promise<void> {
  const t0 = performance.now();
  const device = await deviceForNextSequence();
  const real: Real = { world, device, trace: [] };
  const t1 = performance.now();
  let passed = false;
  try {
    await fc.asyncModelRun(async () => ({ model: { steps: 0, connected: false, chipSession: false }, real }), cmds);
    const t2 = performance.now();
    await probe(real, [probeOn]);
    if (DEBUG) timings.push([t1 - t0, t2 - t1, performance.now() - t2, real.trace.length]);
    passed = true;
  } catch (err) {
    if (err instanceof Error && served.get(device) !== 0)
      err.message += `\n  (device ${device.deviceId} had passed ${served.get(device)} earlier sequences; QKEY_MODEL_FRESH=1 gives each sequence a new device)`;
    throw err;
  } finally {
    runs++;
    served.set(device, (served.get(device) ?? 0) + 1);
    // A device that failed is never reused: the sequences fast-check tries while shrinking start clean.
    if (!passed) await retire(device);
  }
}

function printDebug(): void {
  const sum = (i: number) => timings.reduce((a, t) => a + (t[i] ?? 0), 0).toFixed(0);
  console.log(`devices ${sum(0)} ms, steps ${sum(1)} ms (${sum(3)} steps), probes ${sum(2)} ms`);
  console.log(
    [...coverage]
      .sort()
      .map(([k, n]) => `${String(n).padStart(6)} ${k}`)
      .join('\n'),
  );
}

it(
  `keeps the key agreement under ${RUNS} random sequences of faults and attacks`,
  async () => {
    const started = Date.now();
    try {
      await fc.assert(fc.asyncProperty(commands, broker, sequence), replayParameters());
    } catch (err) {
      // fast-check's report names the seed and path; say how to run exactly that case again.
      const m = err instanceof Error && /seed: (-?\d+), path: "([^"]*)"/.exec(err.message);
      const commandsPath = err instanceof Error && /replayPath="([^"]*)"/.exec(err.message);
      if (m) {
        const shrunk = commandsPath ? ` QKEY_MODEL_REPLAY_PATH='${commandsPath[1]}'` : '';
        err.message += `\nReplay: QKEY_MODEL_SEED=${m[1]} QKEY_MODEL_PATH=${m[2]}${shrunk} npx vitest run test/e2e/key-agreement.test.ts`;
      }
      throw err;
    } finally {
      if (DEBUG) printDebug();
    }
    // One line for the CI log: how many sequences, how long.
    console.log(`key-agreement model: ${runs} sequences in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(runs).toBeGreaterThanOrEqual(RUNS);
  },
  (RUNS * 2 + 60) * 1000,
);
