// The admin token a CLI command sends, and where it came from, so that a refusal names the token's source.
import { join } from 'node:path';
import { ADMIN_TOKEN_FILE } from '../common/admin-token.js';
import { readSecretFile } from '../common/secret-file.js';
import { KmsHttpError } from '../kms-api/client.js';
import { UsageError } from './io.js';

export interface AdminToken {
  token: string;
  /** "--token", "QKEY_ADMIN_TOKEN" or the file it was read from. */
  source: string;
}

/** --token, else QKEY_ADMIN_TOKEN, else `<dataDir>/admin-token`; none of them is a usage error naming all three. */
export function adminTokenFrom(
  flag: string | undefined,
  dataDir: string,
  env: NodeJS.ProcessEnv = process.env,
): AdminToken {
  if (flag) return { token: flag, source: '--token' };
  if (env.QKEY_ADMIN_TOKEN) return { token: env.QKEY_ADMIN_TOKEN, source: 'QKEY_ADMIN_TOKEN' };
  const file = join(dataDir, ADMIN_TOKEN_FILE);
  const token = readSecretFile(file);
  if (token) return { token, source: file };
  throw new UsageError(
    `no admin token: pass --token, set QKEY_ADMIN_TOKEN, or point --data at the key service's folder (${file} not found)`,
  );
}

/** A 401 from the admin API to a request that carried a token: the token was refused; say which one. */
export function namedAdminRefusal(err: unknown, t: AdminToken): unknown {
  if (err instanceof KmsHttpError && err.status === 401)
    return new KmsHttpError(
      err.status,
      err.code,
      `admin token refused by the key service (the token from ${t.source}; is it this key service's?)`,
      err.details,
    );
  return err;
}
