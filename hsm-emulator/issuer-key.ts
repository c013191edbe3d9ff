// The filling station's key-issuer SM2 key pair, kept as a secret file (0600) beside the key service's data.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readSecretFile, writeSecretFile } from '../common/secret-file.js';
import { isSm2PublicKey, type Sm2KeyPair, sm2KeyPair } from './sm2.js';

export const ISSUER_KEY_FILE = 'fill-issuer.sm2';

/** Loads `<dataDir>/fill-issuer.sm2`, creating it on first use. Chips trust this key from their first batch on. */
export function loadIssuerKey(dataDir: string): Sm2KeyPair {
  const path = join(dataDir, ISSUER_KEY_FILE);
  if (!existsSync(dataDir))
    throw new Error(`no folder ${dataDir} for the batch-signing key ${ISSUER_KEY_FILE}: give --data <folder>`);
  const text = readSecretFile(path);
  if (text === undefined) {
    const key = sm2KeyPair();
    writeSecretFile(path, JSON.stringify(key));
    return key;
  }
  let key: Partial<Sm2KeyPair>;
  try {
    key = JSON.parse(text) as Partial<Sm2KeyPair>;
  } catch {
    throw new Error(`${path} is not an issuer key file`);
  }
  if (
    typeof key.privateKey !== 'string' ||
    !/^[0-9a-f]{64}$/.test(key.privateKey) ||
    !isSm2PublicKey(String(key.publicKey))
  )
    throw new Error(`${path} is not an issuer key file`);
  return { privateKey: key.privateKey, publicKey: key.publicKey as string };
}
