// Where the key service keeps its admin bearer token, and how an operator's tool next to it finds the token.
import { join } from 'node:path';
import { readSecretFile } from './secret-file.js';

export const ADMIN_TOKEN_FILE = 'admin-token';

/** The admin token an operator's tool uses next to a key service: QKEY_ADMIN_TOKEN, else `<dataDir>/admin-token`. */
export function findAdminToken(dataDir: string): string | undefined {
  return process.env.QKEY_ADMIN_TOKEN || readSecretFile(join(dataDir, ADMIN_TOKEN_FILE));
}
