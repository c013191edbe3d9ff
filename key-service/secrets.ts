// Service secrets: the Ed25519 token-signing key (wrapped in the key store) and the admin bearer token file.
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
  createHash,
} from 'node:crypto';
import { join } from 'node:path';
import { ADMIN_TOKEN_FILE } from '../common/admin-token.js';
import { readSecretFile, writeSecretFile } from '../common/secret-file.js';
import type { Db } from './db.js';
import type { MasterKey } from './master-key.js';

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/**
 * Tokens are signed with Ed25519 so that brokers verify them with a public key and cannot mint them.
 * SM2 was measured and rejected: ~10x slower on Node 20's OpenSSL 3.0 and its keys do not survive a PEM round trip.
 */
export function loadSigningKey(db: Db, master: MasterKey): SigningKey {
  const row = db.prepare(`SELECT item, wrapped, public_info FROM secrets WHERE name = 'token-signing'`).get() as
    { item: string; wrapped: Buffer; public_info: string } | undefined;
  if (row) {
    const der = master.unwrap(row.item, row.wrapped);
    const privateKey = createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' });
    der.fill(0);
    return { kid: JSON.parse(row.public_info).kid as string, privateKey, publicKey: createPublicKey(privateKey) };
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  const kid = createHash('sha256').update(spki).digest('base64url').slice(0, 16);
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  const item = `secret:token-signing:${kid}`;
  db.prepare(
    `INSERT INTO secrets (name, item, wrapped, public_info, created_at) VALUES ('token-signing', ?, ?, ?, ?)`,
  ).run(item, master.wrap(item, der), JSON.stringify({ kid }), Date.now());
  der.fill(0);
  return { kid, privateKey, publicKey };
}

/** The admin bearer token: from configuration, else `<dataDir>/admin-token` (created 0600 on first run). */
export function loadAdminToken(dataDir: string, configured?: string): string {
  if (configured) return configured;
  const path = join(dataDir, ADMIN_TOKEN_FILE);
  const existing = readSecretFile(path);
  if (existing === '') throw new Error(`${path} is empty; delete it to have a new admin token created`);
  if (existing !== undefined) return existing;
  const token = randomBytes(32).toString('base64url');
  writeSecretFile(path, token);
  return token;
}

/** Constant-time comparison of a presented secret with the expected one (hashing first equalises lengths). */
export function secretEquals(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}
