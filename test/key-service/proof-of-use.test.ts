// Proof of use (docs/KMS-API.md): dec_keys claims an uplink key only with an envelope sealed under it. Every way a
// broker, or a device whose envelope a broker relays, may try to claim a key nobody used, and what the answers,
// the audit log and the logs then carry.
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError, type KmsClient, type UplinkProof } from '../../kms-api/client.js';
import { PROOF_ENVELOPE_MAX_BASE64 } from '../../kms-api/etsi-schemas.js';
import { keyIdFor, MAX_PAYLOAD_LIMIT, sealEnvelope, SUITE_SM4_CTR_HMAC_SM3 } from '../../protocol/index.js';
import {
  brokerClient,
  proofFor,
  type ProvisionedDevice,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;
/** Every proof this file sends; none of their bytes may appear in an error body, a log line or the audit log. */
const sent: UplinkProof[] = [];
/** Every error body this file received, as JSON text. */
const bodies: string[] = [];
/** Every device this file provisions; none of their keys may appear there either. */
const devices: ProvisionedDevice[] = [];

async function provision(deviceId: string, up: number, down: number): Promise<ProvisionedDevice> {
  const dev = await provisionDevice(t.admin, deviceId, up, down);
  devices.push(dev);
  return dev;
}

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const keyId = (dev: ProvisionedDevice, index: number) => keyIdFor(dev.deviceId, index);

/** The proof with one bit of its envelope flipped at `at` (default: the last byte of the tag). */
function tampered(proof: UplinkProof, at = proof.envelope.length - 1): UplinkProof {
  return { ...proof, envelope: proof.envelope.map((b, i) => (i === at ? b ^ 1 : b)) };
}

/** A dec_keys body on the wire; `proof` is sent as given (so tests can send what the client would never build). */
function decBody(entries: Array<{ key_ID: string; proof?: unknown }>) {
  return {
    key_IDs: entries.map(({ key_ID, proof }) =>
      proof === undefined ? { key_ID } : { key_ID, key_ID_extension: { qkey_proof: proof } },
    ),
  };
}

function wire(proof: UplinkProof): { envelope: string; topic: string; direction: string } {
  sent.push(proof);
  return { envelope: b64(proof.envelope), topic: proof.topic, direction: proof.direction };
}

/** The refusal `p` must end in; its body is kept for the leak check at the end. */
async function refusal(p: Promise<unknown>): Promise<KmsHttpError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KmsHttpError);
  const e = err as KmsHttpError;
  bodies.push(JSON.stringify({ message: e.message, code: e.code, details: e.details }));
  return e;
}

/** dec_keys with the given proofs, through the client (which encodes them as a broker does). */
function dec(dev: ProvisionedDevice, indices: number[], proofs: Array<UplinkProof | undefined>, client = broker) {
  for (const p of proofs) if (p) sent.push(p);
  return client.decKeys(
    dev.deviceId,
    indices.map((i) => keyId(dev, i)),
    undefined,
    proofs,
  );
}

async function states(dev: ProvisionedDevice): Promise<Map<number, string>> {
  return new Map((await t.admin.deviceKeys(dev.deviceId)).keys.map((k) => [k.key_index, k.state]));
}

/** Refused for `reason` on key `index`, and that key is still unclaimed and claimable with its own proof. */
async function refusedThenClaimable(dev: ProvisionedDevice, index: number, p: Promise<unknown>, reason: string) {
  const e = await refusal(p);
  expect(e.status).toBe(400);
  expect(e.code).toBe('KMS_ERR_KEY_UNAVAILABLE');
  expect(e.details).toEqual([{ key_ID: keyId(dev, index), reason }]);
  expect((await states(dev)).get(index)).toBe('filled');
}

async function claimsWithItsOwnProof(dev: ProvisionedDevice, index: number) {
  const r = await dec(dev, [index], [uplinkProof(dev, index)]);
  expect(r.keys).toEqual([
    { key_ID: keyId(dev, index), key: b64(dev.keys.get(index)!.key), key_ID_extension: { qkey_key_index: index } },
  ]);
}

describe('a claim without a valid proof claims nothing', () => {
  it('no proof, or an empty extension: proof_required; the key is claimed later with its proof', async () => {
    const dev = await provision('dev-none', 2, 1);
    await refusedThenClaimable(dev, 0, broker.decKeys(dev.deviceId, [keyId(dev, 0)]), 'proof_required');
    await refusedThenClaimable(
      dev,
      0,
      broker.request('POST', `/api/v1/keys/${dev.deviceId}/dec_keys`, {
        key_IDs: [{ key_ID: keyId(dev, 0), key_ID_extension: {} }],
      }),
      'proof_required',
    );
    await claimsWithItsOwnProof(dev, 0);
  });

  it('GET dec_keys, which has no way to carry a proof: proof_required, the key stays claimable', async () => {
    const dev = await provision('dev-get-proof', 1, 1);
    const get = broker.request('GET', `/api/v1/keys/${dev.deviceId}/dec_keys?key_ID=${keyId(dev, 0)}`);
    await refusedThenClaimable(dev, 0, get, 'proof_required');
    await claimsWithItsOwnProof(dev, 0);
  });

  it('a forged envelope (tag, ciphertext or header bit flipped): proof_failed, the key stays claimable', async () => {
    const dev = await provision('dev-forged', 1, 1);
    const good = uplinkProof(dev, 0);
    for (const at of [good.envelope.length - 1, 10, 9, 1]) {
      // 1: the suite byte; 9: the sequence number; 10: the first ciphertext byte; last: the tag.
      await refusedThenClaimable(dev, 0, dec(dev, [0], [tampered(good, at)]), 'proof_failed');
    }
    await claimsWithItsOwnProof(dev, 0);
  });

  it('bytes that are no envelope (too short, another version, an unknown suite, random): proof_failed', async () => {
    const dev = await provision('dev-junk', 1, 1);
    const good = uplinkProof(dev, 0);
    const junk = [
      new Uint8Array(3),
      good.envelope.subarray(0, 26),
      good.envelope.map((b, i) => (i === 0 ? 2 : b)),
      good.envelope.map((b, i) => (i === 1 ? 0x7f : b)),
      randomBytes(good.envelope.length),
    ];
    for (const envelope of junk) {
      await refusedThenClaimable(dev, 0, dec(dev, [0], [{ ...good, envelope }]), 'proof_failed');
    }
    await claimsWithItsOwnProof(dev, 0);
  });

  it("an attacker without the device's keys names every future index: no key is spent, the pool is intact", async () => {
    const dev = await provision('dev-future', 8, 1);
    const before = await broker.status(dev.deviceId);
    for (let i = 0; i < 8; i++) {
      const guess = proofFor(dev.deviceId, i, randomBytes(16));
      await refusedThenClaimable(dev, i, dec(dev, [i], [guess]), 'proof_failed');
    }
    expect(await broker.status(dev.deviceId)).toEqual(before);
    expect(before.status_extension).toMatchObject({ qkey_uplink_available: 8, qkey_next_uplink_key_index: 0 });
    await claimsWithItsOwnProof(dev, 0);
  });
});

describe('the proof must be for this key, this device, this topic and this direction', () => {
  it('an envelope sealed under key i, presented for key j: proof_failed, both keys stay claimable', async () => {
    const dev = await provision('dev-ij', 2, 1);
    // An honest envelope of key 0 (its header names index 0).
    await refusedThenClaimable(dev, 1, dec(dev, [1], [uplinkProof(dev, 0)]), 'proof_failed');
    // Sealed under key 0 with a header naming index 1: the header matches, the tag does not open under key 1.
    const relabelled = proofFor(dev.deviceId, 1, dev.keys.get(0)!.key);
    await refusedThenClaimable(dev, 1, dec(dev, [1], [relabelled]), 'proof_failed');
    expect((await states(dev)).get(0)).toBe('filled');
    await claimsWithItsOwnProof(dev, 0);
    await claimsWithItsOwnProof(dev, 1);
  });

  it('a key below one already claimed is superseded: a held-back envelope cannot be claimed after the chip moved on', async () => {
    const dev = await provision('dev-superseded', 3, 1);
    // The network (or an attacker) held back the only envelope of key 0; the chip went on to key 1.
    const heldBack = uplinkProof(dev, 0);
    await claimsWithItsOwnProof(dev, 1);
    await refusedThenClaimable(dev, 0, dec(dev, [0], [heldBack]), 'superseded');
    await claimsWithItsOwnProof(dev, 2);
  });

  it('the right key with the wrong topic, device or direction: proof_failed', async () => {
    const dev = await provision('dev-ctx', 1, 1);
    const good = uplinkProof(dev, 0, { topic: 'devices/dev-ctx/up/temperature' });
    await refusedThenClaimable(
      dev,
      0,
      dec(dev, [0], [{ ...good, topic: 'devices/dev-ctx/up/humidity' }]),
      'proof_failed',
    );
    // Sealed under this device's key but bound to another device id in its AAD.
    const otherDevice = uplinkProof(dev, 0, { sealedBy: 'dev-ctx2' });
    await refusedThenClaimable(dev, 0, dec(dev, [0], [otherDevice]), 'proof_failed');
    // An uplink envelope presented as a will, and a will presented as uplink.
    await refusedThenClaimable(dev, 0, dec(dev, [0], [{ ...good, direction: 'will' }]), 'proof_failed');
    const will = uplinkProof(dev, 0, { direction: 'will', topic: 'devices/dev-ctx/up/will' });
    await refusedThenClaimable(dev, 0, dec(dev, [0], [{ ...will, direction: 'up' }]), 'proof_failed');
    await claimsWithItsOwnProof(dev, 0);
  });

  it("another device's own valid envelope with the same key index: proof_failed", async () => {
    const dev = await provision('dev-mine', 1, 1);
    const other = await provision('dev-theirs', 1, 1);
    await refusedThenClaimable(dev, 0, dec(dev, [0], [uplinkProof(other, 0)]), 'proof_failed');
    expect((await states(other)).get(0)).toBe('filled');
    await claimsWithItsOwnProof(dev, 0);
  });

  it("direction 'down' is refused by the schema (400), and a downlink envelope under an uplink key does not open", async () => {
    const dev = await provision('dev-down', 1, 1);
    const good = uplinkProof(dev, 0);
    const e = await refusal(
      broker.request(
        'POST',
        `/api/v1/keys/${dev.deviceId}/dec_keys`,
        decBody([{ key_ID: keyId(dev, 0), proof: { ...wire(good), direction: 'down' } }]),
      ),
    );
    expect([e.status, e.code]).toEqual([400, 'KMS_ERR_BAD_REQUEST']);
    expect(e.message).toMatch(/direction/);
    expect((await states(dev)).get(0)).toBe('filled');
    // Sealed by someone holding the key with direction 'down' (nonce and AAD differ), presented as 'up'.
    const envelope = sealEnvelope(new Uint8Array([1]), {
      key: dev.keys.get(0)!.key,
      keyIndex: 0,
      seq: 1,
      deviceId: dev.deviceId,
      topic: good.topic,
      direction: 'down',
    });
    await refusedThenClaimable(dev, 0, dec(dev, [0], [{ ...good, envelope }]), 'proof_failed');
    await claimsWithItsOwnProof(dev, 0);
  });
});

describe('what a proof may be', () => {
  it("a will (direction 'will', sequence number 0) proves use of the connection's uplink key", async () => {
    const dev = await provision('dev-will', 1, 1);
    const will = uplinkProof(dev, 0, { direction: 'will', topic: 'devices/dev-will/up/lwt' });
    const r = await dec(dev, [0], [will]);
    expect(r.keys[0]!.key).toBe(b64(dev.keys.get(0)!.key));
  });

  it('an envelope of the other suite (SM4-CTR-HMAC-SM3) proves use as well', async () => {
    const dev = await provision('dev-ctr-proof', 1, 1);
    const r = await dec(dev, [0], [uplinkProof(dev, 0, { suite: SUITE_SM4_CTR_HMAC_SM3 })]);
    expect(r.keys[0]!.key).toBe(b64(dev.keys.get(0)!.key));
  });

  it("an envelope of the protocol's largest payload is accepted; one byte more is refused by size (400)", async () => {
    const dev = await provision('dev-big-proof', 1, 1);
    const largest = uplinkProof(dev, 0, { payload: randomBytes(MAX_PAYLOAD_LIMIT), maxPayload: MAX_PAYLOAD_LIMIT });
    expect(b64(largest.envelope).length).toBe(PROOF_ENVELOPE_MAX_BASE64);
    const over = { ...largest, envelope: Buffer.concat([largest.envelope, Buffer.alloc(3)]) };
    const e = await refusal(
      broker.request(
        'POST',
        `/api/v1/keys/${dev.deviceId}/dec_keys`,
        decBody([{ key_ID: keyId(dev, 0), proof: wire(over) }]),
      ),
    );
    expect([e.status, e.code]).toEqual([400, 'KMS_ERR_BAD_REQUEST']);
    expect(e.message).toContain(`${PROOF_ENVELOPE_MAX_BASE64}`);
    expect((await states(dev)).get(0)).toBe('filled');
    expect((await dec(dev, [0], [largest])).keys).toHaveLength(1);
  });

  it('the envelope must be canonical padded base64: anything else is 400 naming the key, and claims nothing', async () => {
    const dev = await provision('dev-b64', 1, 1);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    /** The spelling with a pad bit set (RFC 4648 §3.5 wants them zero): it decodes to the same bytes. */
    const withPadBit = (s: string) => {
      const at = s.indexOf('=') - 1;
      return `${s.slice(0, at)}${alphabet[alphabet.indexOf(s[at]!) | 1]}${s.slice(at + 1)}`;
    };
    // Envelopes of 31 and 32 bytes (5- and 6-byte payloads): their base64 ends in '==' and in '='.
    const shorts = [5, 6].map((n) => uplinkProof(dev, 0, { payload: new Uint8Array(n).fill(0x41) }));
    const [s2, s1] = shorts.map((p) => b64(p.envelope)) as [string, string];
    expect([s2.slice(-3), s1.slice(-2)].map((x) => x.replace(/[^=]/g, ''))).toEqual(['==', '=']);
    const short = shorts[1]!;
    expect(Buffer.from(withPadBit(s1), 'base64')).toEqual(Buffer.from(short.envelope));
    const spellings = [
      s1.slice(0, -1), // unpadded
      s2.slice(0, -2),
      `${s1}=`, // over-padded
      Buffer.from(short.envelope).toString('base64url'), // URL-safe alphabet, unpadded
      b64(short.envelope).replace(/\+/g, '-').replace(/\//g, '_'), // URL-safe alphabet, padded
      `${s1.slice(0, 8)}\n${s1.slice(8)}`, // a line break
      ` ${s1}`,
      withPadBit(s1), // decodes to the same bytes, but is not the canonical spelling
      withPadBit(s2),
      `${s1}====`,
      '====',
    ].filter((x) => x !== s1 && x !== s2);
    expect(spellings.length).toBeGreaterThanOrEqual(10);
    for (const envelope of spellings) {
      const e = await refusal(
        broker.request(
          'POST',
          `/api/v1/keys/${dev.deviceId}/dec_keys`,
          decBody([{ key_ID: keyId(dev, 0), proof: { ...wire(short), envelope } }]),
        ),
      );
      expect([e.status, e.code], JSON.stringify(envelope)).toEqual([400, 'KMS_ERR_BAD_REQUEST']);
      expect(e.message).toMatch(/qkey_proof\.envelope must be canonical padded base64/);
      expect(e.details).toEqual([{ key_ID: keyId(dev, 0), reason: 'proof_encoding' }]);
    }
    expect((await states(dev)).get(0)).toBe('filled');
    expect((await dec(dev, [0], [short])).keys).toHaveLength(1);
  });

  it('an empty envelope, topic or a missing field is refused by the schema', async () => {
    const dev = await provision('dev-shape', 1, 1);
    const good = wire(uplinkProof(dev, 0));
    for (const proof of [
      { ...good, envelope: '' },
      { ...good, topic: '' },
      { envelope: good.envelope, topic: good.topic },
      { ...good, extra: 1 },
    ]) {
      const e = await refusal(
        broker.request('POST', `/api/v1/keys/${dev.deviceId}/dec_keys`, decBody([{ key_ID: keyId(dev, 0), proof }])),
      );
      expect([e.status, e.code]).toEqual([400, 'KMS_ERR_BAD_REQUEST']);
    }
    expect((await states(dev)).get(0)).toBe('filled');
  });

  it('a topic the device could not have sealed (over 65,535 UTF-8 bytes) fails that claim alone, not its batch', async () => {
    const dev = await provision('dev-long-topic', 1, 1);
    const other = await provision('dev-neighbour', 1, 1);
    // 40,000 characters pass the schema's length bound; as UTF-8 they are 80,000 bytes, more than the AAD can bind.
    const longTopic = { ...uplinkProof(dev, 0), topic: 'é'.repeat(40_000) };
    await refusedThenClaimable(dev, 0, dec(dev, [0], [longTopic]), 'proof_failed');
    // Submitted in one event-loop turn, so both claims share one transaction: the neighbour's claim commits.
    const claims = t.kms.context.claims;
    const request = (d: ProvisionedDevice, proof: UplinkProof) =>
      claims.submit({
        kind: 'dec',
        deviceId: d.deviceId,
        keyIds: [keyId(d, 0)],
        proofs: [proof],
        brokerId: 'broker-1',
        sessionId: null,
      });
    const [refused, neighbour] = await Promise.allSettled([
      request(dev, longTopic),
      request(other, uplinkProof(other, 0)),
    ]);
    expect(neighbour.status).toBe('fulfilled');
    expect(refused.status).toBe('rejected');
    expect(((refused as PromiseRejectedResult).reason as KmsHttpError).details).toEqual([
      { key_ID: keyId(dev, 0), reason: 'proof_failed' },
    ]);
    await claimsWithItsOwnProof(dev, 0);
  });
});

describe('bodies too large for any proof', () => {
  let token: string;
  beforeAll(async () => {
    const { client_secret } = await t.admin.registerBroker('broker-raw');
    token = (await t.anon.clientToken('broker-raw', client_secret)).access_token;
  });

  /** Sends the head of a POST to dec_keys declaring `length` bytes of body and `first` of them; the status line. */
  function declared(length: number, first: string): Promise<string> {
    const { hostname, port } = new URL(t.url);
    return new Promise((resolve, reject) => {
      const s = connect(Number(port), hostname, () => {
        s.write(
          `POST /api/v1/keys/dev-huge/dec_keys HTTP/1.1\r\nhost: ${hostname}\r\nauthorization: Bearer ${token}\r\n` +
            `content-type: application/json\r\ncontent-length: ${length}\r\n\r\n${first}`,
        );
      });
      let answer = '';
      s.on('data', (c: Buffer) => {
        answer += c.toString('latin1');
        if (answer.includes('\r\n')) {
          s.destroy();
          resolve(answer.slice(0, answer.indexOf('\r\n')));
        }
      });
      s.on('error', reject);
    });
  }

  it('a body declaring more than bodyLimit is answered 413 before it is sent, so nothing is buffered', async () => {
    // The rest of the 64 MiB is never sent: the answer cannot wait for it.
    expect(await declared(64 * 1024 * 1024, '{"key_IDs":[{"key_ID":"')).toBe('HTTP/1.1 413 Payload Too Large');
  });

  it('a body of many maximum-size proofs beyond bodyLimit is 413 KMS_ERR_TOO_LARGE', async () => {
    const dev = await provision('dev-huge', 2, 1);
    const proofs = [0, 1].map((i) =>
      uplinkProof(dev, i, { payload: randomBytes(MAX_PAYLOAD_LIMIT), maxPayload: MAX_PAYLOAD_LIMIT }),
    );
    const e = await refusal(
      broker.request(
        'POST',
        `/api/v1/keys/${dev.deviceId}/dec_keys`,
        decBody(proofs.map((p, i) => ({ key_ID: keyId(dev, i), proof: wire(p) }))),
      ),
    );
    expect([e.status, e.code]).toEqual([413, 'KMS_ERR_TOO_LARGE']);
    expect([...(await states(dev))].filter(([, s]) => s === 'claimed')).toEqual([]);
  });
});

describe('claims with proofs, many at once', () => {
  it('two brokers racing for the same keys, both with valid proofs: exactly one gets each key', async () => {
    const dev = await provision('dev-race', 8, 1);
    const other = await brokerClient(t, 'broker-racer');
    const indices = [0, 1, 2, 3, 4, 5, 6, 7];
    const attempts = indices.flatMap((i) => [
      { i, broker: 'broker-1', p: dec(dev, [i], [uplinkProof(dev, i)]) },
      { i, broker: 'broker-racer', p: dec(dev, [i], [uplinkProof(dev, i)], other) },
    ]);
    const results = await Promise.allSettled(attempts.map((a) => a.p));
    const keys = (await t.admin.deviceKeys(dev.deviceId)).keys;
    for (const i of indices) {
      const mine = results.filter((_, n) => attempts[n]!.i === i);
      const won = mine.flatMap((r, n) => (r.status === 'fulfilled' ? [n] : []));
      expect(won, `key ${i}`).toHaveLength(1);
      const lost = mine[1 - won[0]!] as PromiseRejectedResult;
      expect((lost.reason as KmsHttpError).details).toEqual([{ key_ID: keyId(dev, i), reason: 'claimed' }]);
      const winner = attempts.filter((a) => a.i === i)[won[0]!]!.broker;
      expect(keys.find((k) => k.key_index === i)).toMatchObject({ state: 'claimed', claimed_by: winner });
    }
  });

  it('one valid and one forged proof in one request: all or nothing, the valid key is still claimable', async () => {
    const dev = await provision('dev-mixed', 2, 1);
    const forged = tampered(uplinkProof(dev, 1));
    const e = await refusal(dec(dev, [0, 1], [uplinkProof(dev, 0), forged]));
    expect(e.code).toBe('KMS_ERR_KEY_UNAVAILABLE');
    expect(e.details).toEqual([{ key_ID: keyId(dev, 1), reason: 'proof_failed' }]);
    const s = await states(dev);
    expect([s.get(0), s.get(1)]).toEqual(['filled', 'filled']);
    // Also with the proofs the other way round, and with one missing.
    await refusal(dec(dev, [1, 0], [forged, uplinkProof(dev, 0)]));
    const missing = await refusal(dec(dev, [0, 1], [uplinkProof(dev, 0), undefined]));
    expect(missing.details).toEqual([{ key_ID: keyId(dev, 1), reason: 'proof_required' }]);
    await claimsWithItsOwnProof(dev, 0);
    await claimsWithItsOwnProof(dev, 1);
  });

  it('a batch of valid claims from many devices at once all succeed (group commit with proofs)', async () => {
    const devs = await Promise.all(Array.from({ length: 16 }, (_, n) => provision(`dev-batch-${n}`, 2, 1)));
    const results = await Promise.all(devs.map((d) => dec(d, [0, 1], [uplinkProof(d, 0), uplinkProof(d, 1)])));
    results.forEach((r, n) =>
      expect(r.keys.map((k) => k.key)).toEqual([b64(devs[n]!.keys.get(0)!.key), b64(devs[n]!.keys.get(1)!.key)]),
    );
  });
});

describe('what refusals leave behind', () => {
  it('refused attempts are counted in metrics; the audit log records the claim only', async () => {
    const dev = await provision('dev-audit-proof', 2, 1);
    const refusedCount = async () => {
      const text = await (await fetch(`${t.url}/metrics`)).text();
      return Number(/^kms_claim_requests_total\{api="dec_keys",result="refused"\} (\d+)$/m.exec(text)?.[1] ?? 0);
    };
    const before = await refusedCount();
    await refusal(dec(dev, [0], [tampered(uplinkProof(dev, 0))]));
    await refusal(broker.decKeys(dev.deviceId, [keyId(dev, 1)]));
    expect((await refusedCount()) - before).toBe(2);
    await dec(dev, [1], [uplinkProof(dev, 1)]);
    const { entries } = await t.admin.audit({ device_id: dev.deviceId });
    expect(entries.map((e) => e.action)).toEqual([
      'device.register',
      'batch.register',
      'batch.commit',
      'key.claim.dec',
    ]);
    expect(entries[3]).toMatchObject({ actor: 'broker-1', detail: { key_IDs: [keyId(dev, 1)] } });
  });

  it('proof refusals are logged at warn with key ids and reasons; no key, envelope or payload in any body or log', async () => {
    const dev = await provision('dev-leak', 1, 1);
    const payload = new TextEncoder().encode('plaintext-telemetry-7f3a');
    const proof = uplinkProof(dev, 0, { payload });
    await refusal(dec(dev, [0], [tampered(proof)]));
    await dec(dev, [0], [proof]);
    await refusal(dec(dev, [0], [proof]));

    const lines = t
      .logs()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { level: number; msg: string; refused?: unknown; device?: string });
    const warned = lines.filter((l) => l.msg === 'uplink claim refused: no valid proof of use');
    expect(warned.length).toBeGreaterThan(0);
    expect(warned.every((l) => l.level === 40)).toBe(true);
    expect(warned).toContainEqual(
      expect.objectContaining({ device: dev.deviceId, refused: [{ key_ID: keyId(dev, 0), reason: 'proof_failed' }] }),
    );

    const text = [t.logs(), ...bodies, JSON.stringify((await t.admin.audit({ limit: 1000 })).entries)].join('\n');
    expect(sent.length).toBeGreaterThan(50);
    const secrets = new Set<string>([Buffer.from(payload).toString('latin1')]);
    for (const p of sent) {
      const s = b64(p.envelope);
      const hex = Buffer.from(p.envelope).toString('hex');
      // Runs of 24 characters of its base64 and hex (its header alone is 14 and 20), from envelopes long enough.
      for (let i = 0; i + 24 <= s.length && i < 240; i += 24) secrets.add(s.slice(i, i + 24));
      if (hex.length >= 64) secrets.add(hex.slice(0, 64));
    }
    for (const key of devices.flatMap((d) => [...d.keys.values()])) {
      secrets.add(key.key.toString('base64'));
      secrets.add(key.key.toString('hex'));
    }
    for (const s of secrets) expect(text.includes(s), s).toBe(false);
  });
});
