// Login and token routes: device challenge-response, client credentials, the token-signing public keys.
import * as wire from '../../kms-api/auth-schemas.js';
import { equalBytes, loginProof } from '../../protocol/index.js';
import type { RouteScope } from '../access.js';
import { issueToken, type KmsContext } from '../context.js';
import { KmsError } from '../errors.js';

/** Public group: the callers are not authenticated yet. */
export function authRoutes(app: RouteScope, ctx: KmsContext): void {
  const { limiter } = ctx;
  const limits = ctx.config.loginLimits;

  /** 429 once the device or the source address has used up its failed attempts. */
  const checkLimits = (subject: string, source: string) => {
    const wait = limiter.blocked(`s:${subject}`, limits.perDevice) ?? limiter.blocked(`ip:${source}`, limits.perSource);
    if (wait !== undefined) throw new KmsError('KMS_ERR_RATE_LIMITED', undefined, { retryAfterSeconds: wait });
  };
  const failed = (subject: string, source: string, grant: string): never => {
    limiter.fail(`s:${subject}`);
    limiter.fail(`ip:${source}`);
    ctx.metrics.logins.inc({ grant, result: 'failed' });
    ctx.store.audit(subject, 'login.failed', grant === 'device_challenge' ? subject : null, { grant, source });
    throw new KmsError('KMS_ERR_LOGIN_FAILED');
  };

  app.post('/api/v1/auth/challenge', { schema: wire.challengeRoute }, async (req) => {
    checkLimits(req.body.device_id, req.ip);
    // Issued for any id, so the response does not tell which devices exist.
    const { challenge } = ctx.challenges.issue(req.body.device_id);
    return { challenge: challenge.toString('base64'), expires_in: ctx.config.challengeTtl };
  });

  app.post('/api/v1/auth/token', { schema: wire.tokenRoute }, async (req) => {
    const body = req.body;
    if (body.grant_type === 'device_challenge') {
      checkLimits(body.device_id, req.ip);
      // The challenge is consumed whatever the outcome: each one gets a single try.
      const fresh = ctx.challenges.take(body.device_id, body.challenge);
      const loginKey = fresh ? ctx.store.loginKey(body.device_id) : undefined;
      if (!loginKey) return failed(body.device_id, req.ip, body.grant_type);
      const expected = loginProof(loginKey, body.device_id, Buffer.from(body.challenge, 'base64'));
      loginKey.fill(0);
      if (!equalBytes(expected, Buffer.from(body.mac, 'base64')))
        return failed(body.device_id, req.ip, body.grant_type);
      const suites = ctx.store.device(body.device_id)?.suites;
      const { token, expiresIn } = issueToken(
        ctx,
        'device',
        body.device_id,
        undefined,
        suites ? (JSON.parse(suites) as number[]) : undefined,
      );
      ctx.metrics.logins.inc({ grant: body.grant_type, result: 'ok' });
      ctx.store.audit(body.device_id, 'login', body.device_id, { grant: body.grant_type, source: req.ip });
      return { access_token: token, token_type: 'Bearer' as const, expires_in: expiresIn };
    }
    checkLimits(body.client_id, req.ip);
    const client = await ctx.store.verifyClient(body.client_id, body.client_secret);
    if (!client) return failed(body.client_id, req.ip, body.grant_type);
    const { token, expiresIn } = issueToken(
      ctx,
      client.role,
      client.client_id,
      client.acl ? JSON.parse(client.acl) : undefined,
    );
    ctx.metrics.logins.inc({ grant: body.grant_type, result: 'ok' });
    ctx.store.audit(client.client_id, 'login', null, { grant: body.grant_type, role: client.role, source: req.ip });
    return { access_token: token, token_type: 'Bearer' as const, expires_in: expiresIn };
  });

  app.get('/api/v1/auth/keys', { schema: wire.tokenKeysRoute }, async () => ({
    keys: [
      {
        kid: ctx.signing.kid,
        alg: 'Ed25519' as const,
        public_key: ctx.signing.publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
      },
    ],
  }));
}
