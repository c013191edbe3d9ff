// Keys at rest: never in clear in the database or its WAL, master key file handling and rotation, migrations, logs.
import { chmodSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { DB_FILE } from '../../key-service/app.js';
import { openDatabase } from '../../key-service/db.js';
import { rotateMasterKey } from '../../key-service/master-key.js';
import { MIGRATIONS } from '../../key-service/migrations.js';
import { keyIdFor, loginProof } from '../../protocol/index.js';
import {
  claimUplink,
  newKmsDir,
  provisionDevice,
  removeDir,
  startTestKms,
  tempDir,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function kmsIn(dir = newKmsDir(), overrides = {}): Promise<TestKms> {
  const t = await startTestKms(overrides, dir);
  cleanup.push(() => t.stop());
  return t;
}

function storeFiles(dir: string): Buffer {
  return Buffer.concat(
    readdirSync(dir)
      .filter((f) => f.startsWith(DB_FILE))
      .map((f) => readFileSync(join(dir, f))),
  );
}

describe('key material at rest', () => {
  it('no raw key appears in the database, its WAL or its shared memory, in binary, hex or base64', async () => {
    const dir = newKmsDir();
    cleanup.push(() => removeDir(dir));
    const t = await kmsIn(dir);
    const dev = await provisionDevice(t.admin, 'dev-rest', 20, 20);
    const secrets = [dev.loginKey, ...[...dev.keys.values()].map((k) => k.key)];
    const check = () => {
      const bytes = storeFiles(dir);
      expect(bytes.length).toBeGreaterThan(0);
      for (const k of secrets) {
        expect(bytes.indexOf(k)).toBe(-1);
        expect(bytes.indexOf(Buffer.from(k.toString('hex')))).toBe(-1);
        expect(bytes.indexOf(Buffer.from(k.toString('base64')))).toBe(-1);
      }
    };
    check(); // while running: the WAL holds the fresh pages
    await t.stop();
    check(); // after the checkpoint on close
  });

  it('creates the master key and admin token readable by the owner only', async () => {
    const dir = newKmsDir();
    cleanup.push(() => removeDir(dir));
    await kmsIn(dir, { adminToken: undefined });
    for (const f of ['master-key.v1', 'admin-token']) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'admin-token'), 'utf8').trim()).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('refuses to start without its master key, or with a master key others can read', async () => {
    const dir = newKmsDir();
    cleanup.push(() => removeDir(dir));
    const t = await startTestKms({}, dir);
    await t.stop();
    const file = join(dir, 'master-key.v1');
    chmodSync(file, 0o644);
    await expect(startTestKms({}, dir)).rejects.toThrow(/chmod 600/);
    removeDir(file);
    await expect(startTestKms({}, dir)).rejects.toThrow(/KMS_DATA_ERR_NO_MASTER_KEY/);
  });

  it('rotate-master-key rewraps every key; keys, login keys and tokens keep working, the old key file is gone', async () => {
    const dir = newKmsDir();
    cleanup.push(() => removeDir(dir));
    let t = await startTestKms({}, dir);
    const { client_secret } = await t.admin.registerBroker('broker-rot');
    const brokerToken = (await t.anon.clientToken('broker-rot', client_secret)).access_token;
    const broker = t.anon.withToken(brokerToken);
    const dev = await provisionDevice(t.admin, 'dev-rot', 2, 2);
    await claimUplink(broker, dev, 0);
    await t.stop();
    const before = storeFiles(dir);
    const db = openDatabase(join(dir, DB_FILE), { create: false });
    const r = rotateMasterKey(db, dir);
    db.close();
    expect(r).toMatchObject({ from: 1, to: 2 });
    expect(r.rewrapped).toBe(3 + 1 + 1); // 3 unclaimed keys, 1 login key, 1 token-signing key
    expect(existsSync(join(dir, 'master-key.v1'))).toBe(false);
    expect(statSync(join(dir, 'master-key.v2')).mode & 0o777).toBe(0o600);
    expect(storeFiles(dir).equals(before)).toBe(false);
    t = await kmsIn(dir);
    const again = t.anon.withToken(brokerToken);
    // The proof of use opens under the key unwrapped with the new master key.
    expect((await claimUplink(again, dev, 1)).keys[0]!.key).toBe(dev.keys.get(1)!.key.toString('base64'));
    const { challenge } = await t.anon.challenge('dev-rot');
    const mac = Buffer.from(loginProof(dev.loginKey, 'dev-rot', Buffer.from(challenge, 'base64'))).toString('base64');
    expect((await t.anon.deviceToken('dev-rot', challenge, mac)).token_type).toBe('Bearer');
  });
});

describe('migrations', () => {
  it('records the schema version in user_version and refuses a newer database', () => {
    const dir = tempDir();
    cleanup.push(() => removeDir(dir));
    const file = join(dir, DB_FILE);
    openDatabase(file, { create: true }).close();
    const raw = new Database(file);
    expect(raw.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    raw.close();
    expect(() => openDatabase(file, { create: false })).toThrow(/newer than this build/);
  });
});

describe('logs', () => {
  it('carry no key material, tokens, MACs or client secrets through a whole provisioning, login and claim flow', async () => {
    const dir = newKmsDir();
    cleanup.push(() => removeDir(dir));
    const t = await kmsIn(dir, { logLevel: 'debug' });
    const { client_secret } = await t.admin.registerBroker('broker-log');
    const token = (await t.anon.clientToken('broker-log', client_secret)).access_token;
    const broker = t.anon.withToken(token);
    const dev = await provisionDevice(t.admin, 'dev-log', 2, 2);
    const { challenge } = await t.anon.challenge('dev-log');
    const mac = Buffer.from(loginProof(dev.loginKey, 'dev-log', Buffer.from(challenge, 'base64'))).toString('base64');
    const deviceToken = (await t.anon.deviceToken('dev-log', challenge, mac)).access_token;
    const proof = uplinkProof(dev, 0);
    await broker.decKeys('dev-log', [keyIdFor('dev-log', 0)], undefined, [proof]);
    // Refused claims: a proof presented again (the key is claimed) and a forged one for the next key.
    await broker.decKeys('dev-log', [keyIdFor('dev-log', 0)], undefined, [proof]).catch(() => undefined);
    const forged = uplinkProof(dev, 1);
    forged.envelope[forged.envelope.length - 1]! ^= 1;
    await broker.decKeys('dev-log', [keyIdFor('dev-log', 1)], undefined, [forged]).catch(() => undefined);
    await broker.encKeys('dev-log', 1);
    await broker.encKeys('dev-log', 5).catch(() => undefined);
    const logs = t.logs();
    expect(logs).toContain('"statusCode":200');
    for (const secret of [
      client_secret,
      token,
      deviceToken,
      mac,
      challenge,
      'test-admin-token',
      dev.loginKey.toString('base64'),
      Buffer.from(proof.envelope).toString('base64'),
      Buffer.from(forged.envelope).toString('base64'),
      ...[...dev.keys.values()].flatMap((k) => [k.key.toString('base64'), k.key.toString('hex')]),
    ]) {
      expect(logs).not.toContain(secret);
    }
  });
});
