// Login and token routes: device challenge-response, client credentials, the token-signing public keys.
import * as wire from '../../kms-api/auth-schemas.js';
import { equalBytes, loginProof } from '../../protocol/index.js';
import type { RouteScope } from '../access.js';
import { issueToken, type KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import type { Attempt, Refusal } from '../login-limits.js';

/** Public group: the callers are not authenticated yet. */
export function authRoutes(app: RouteScope, ctx: KmsContext): void {
  const { limiter } = ctx;

  /** 429 with Retry-After when login-limits.ts refuses. */
  const refuse = (r: Refusal | undefined, grant: string) => {
    if (!r) return;
    ctx.metrics.logins.inc({ grant, result: 'limited' });
    throw new KmsError('KMS_ERR_RATE_LIMITED', undefined, { retryAfterSeconds: r.retryAfterSeconds });
  };
  const admit = (subject: string, source: string, grant: string): Attempt => {
    // Devices and clients are limited apart: a device and an app of the same name are different subjects.
    const attempt = limiter.attempt(`${grant === 'device_challenge' ? 'device' : 'client'}:${subject}`, source);
    if (!attempt.ok) return refuse(attempt, grant) as never;
    return attempt;
  };
  const failed = (attempt: Attempt, subject: string, source: string, grant: string): never => {
    attempt.failed();
    ctx.metrics.logins.inc({ grant, result: 'failed' });
    ctx.store.audit(subject, 'login.failed', grant === 'device_challenge' ? subject : null, { grant, source });
    throw new KmsError('KMS_ERR_LOGIN_FAILED');
  };

  app.post('/api/v1/auth/challenge', { schema: wire.challengeRoute }, async (req) => {
    refuse(limiter.challenge(req.ip) ?? limiter.check(`device:${req.body.device_id}`, req.ip), 'device_challenge');
    // Issued for any id, so the response does not tell which devices exist.
    const issued = ctx.challenges.issue(req.body.device_id, req.ip);
    if (!issued) throw new KmsError('KMS_ERR_RATE_LIMITED', 'too many open challenges', { retryAfterSeconds: 1 });
    const { challenge } = issued;
    return { challenge: challenge.toString('base64'), expires_in: ctx.config.challengeTtl };
  });

  app.post('/api/v1/auth/token', { schema: wire.tokenRoute }, async (req) => {
    const body = req.body;
    if (body.grant_type === 'device_challenge') {
      const attempt = admit(body.device_id, req.ip, body.grant_type);
      try {
        // The challenge is consumed whatever the outcome: each one gets a single try.
        const fresh = ctx.challenges.take(body.device_id, body.challenge);
        const loginKey = fresh ? ctx.store.loginKey(body.device_id) : undefined;
        if (!loginKey) return failed(attempt, body.device_id, req.ip, body.grant_type);
        const expected = loginProof(loginKey, body.device_id, Buffer.from(body.challenge, 'base64'));
        loginKey.fill(0);
        if (!equalBytes(expected, Buffer.from(body.mac, 'base64')))
          return failed(attempt, body.device_id, req.ip, body.grant_type);
        attempt.succeeded();
      } finally {
        attempt.abandoned(); // a no-op once settled; releases the attempt if the check itself threw
      }
      const suites = ctx.store.device(body.device_id)?.suites;
      const { token, expiresIn } = issueToken(
        ctx,
        'device',
        body.device_id,
        undefined,
        suites ? (JSON.parse(suites) as number[]) : undefined,
      );
      ctx.metrics.logins.inc({ grant: body.grant_type, result: 'ok' });
      // Answered once the record is on disk, committed with the other logins of this turn (audit-queue.ts).
      await ctx.audits.append(body.device_id, 'login', body.device_id, { grant: body.grant_type, source: req.ip });
      return { access_token: token, token_type: 'Bearer' as const, expires_in: expiresIn };
    }
    const attempt = admit(body.client_id, req.ip, body.grant_type);
    let client;
    try {
      client = await ctx.store.verifyClient(body.client_id, body.client_secret);
      if (!client) return failed(attempt, body.client_id, req.ip, body.grant_type);
      attempt.succeeded();
    } finally {
      attempt.abandoned();
    }
    const { token, expiresIn } = issueToken(
      ctx,
      client.role,
      client.client_id,
      client.acl ? JSON.parse(client.acl) : undefined,
    );
    ctx.metrics.logins.inc({ grant: body.grant_type, result: 'ok' });
    await ctx.audits.append(client.client_id, 'login', null, {
      grant: body.grant_type,
      role: client.role,
      source: req.ip,
    });
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
