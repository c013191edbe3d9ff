// Application sessions (docs/PROTOCOL.md §22): the administrator registers SM2 keys and fills the app key pool; an
// app proves its token and SM2 key over a fresh challenge and gets a session key under SM2; its broker claims it.
import * as wire from '../../kms-api/app-session-schemas.js';
import {
  APP_CHALLENGE_LENGTH,
  challengeMessage,
  isAppSm2PublicKey,
  verifyChallenge,
  wrapSessionKey,
} from '../../protocol/index.js';
import type { RouteScope } from '../access.js';
import { appId, brokerId } from '../callers.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';

const ADMIN = 'admin';

/** A checked, lowercase SM2 public key, or KMS_ERR_PUBLIC_KEY_INVALID (the schema has bounded its form already). */
export function checkedSm2PublicKey(hex: string): string {
  const key = hex.toLowerCase();
  if (!isAppSm2PublicKey(key)) throw new KmsError('KMS_ERR_PUBLIC_KEY_INVALID', 'the point is not on the SM2 curve');
  return key;
}

/** The subject a challenge is issued to: one app, for one broker (ids cannot contain a newline). */
const subjectOf = (app: string, broker: string) => `app\n${app}\n${broker}`;

/** Admin group. */
export function adminAppSessionRoutes(app: RouteScope, ctx: KmsContext): void {
  app.put('/api/v1/admin/apps/:id/sm2-public-key', { schema: wire.setSm2KeyRoute }, async (req) => {
    const key = checkedSm2PublicKey(req.body.sm2_public_key);
    ctx.appSessions.setSm2PublicKey(req.params.id, key, ADMIN);
    return { app_id: req.params.id, sm2_public_key: key };
  });

  app.post('/api/v1/admin/app-keys', { schema: wire.appKeyFillRoute }, async (req, reply) => {
    const keys = req.body.keys.map((k) => Buffer.from(k, 'base64'));
    try {
      const ids = ctx.appSessions.fill(req.body.batch_id, keys, ADMIN);
      reply.code(201);
      return { batch_id: req.body.batch_id, count: ids.length };
    } finally {
      for (const k of keys) k.fill(0);
    }
  });

  app.get('/api/v1/admin/app-keys', { schema: wire.appKeyLevelsRoute }, async () => ctx.appSessions.levels());
}

/** App group: the caller has presented a valid app token (callers.ts). */
export function appSessionRoutes(app: RouteScope, ctx: KmsContext): void {
  const refuse = (appName: string, reason: string): never => {
    ctx.store.audit(appName, 'app.session.failed', null, { client_id: appName, reason });
    throw new KmsError('KMS_ERR_LOGIN_FAILED');
  };

  app.post('/api/v1/apps/session/challenge', { schema: wire.sessionChallengeRoute }, async (req) => {
    const me = appId(req);
    if (!ctx.appSessions.sm2PublicKey(me))
      throw new KmsError('KMS_ERR_CONFLICT', 'the app has no SM2 public key registered');
    if (!ctx.store.isActiveBroker(req.body.broker_id))
      throw new KmsError('KMS_ERR_NOT_FOUND', `broker ${req.body.broker_id}`);
    const issued = ctx.appChallenges.issue(subjectOf(me, req.body.broker_id), req.ip);
    if (!issued) throw new KmsError('KMS_ERR_RATE_LIMITED', 'too many open challenges', { retryAfterSeconds: 1 });
    if (issued.challenge.length !== APP_CHALLENGE_LENGTH) throw new Error('challenge length');
    return {
      app_id: me,
      kme_id: ctx.config.kmeId,
      broker_id: req.body.broker_id,
      challenge: issued.challenge.toString('base64'),
      expires_at: Math.floor(issued.expiresAt / 1000),
    };
  });

  app.post('/api/v1/apps/session', { schema: wire.sessionKeyRoute }, async (req) => {
    const me = appId(req);
    const { broker_id: broker, challenge, signature } = req.body;
    // Single use: the challenge is consumed whatever the outcome; it counts only for the app and broker it was for.
    const expiresAt = ctx.appChallenges.takeIssued(subjectOf(me, broker), challenge);
    if (expiresAt === undefined) return refuse(me, 'challenge');
    const publicKey = ctx.appSessions.sm2PublicKey(me);
    if (!publicKey) return refuse(me, 'no_sm2_key');
    const message = challengeMessage({
      appId: me,
      kmeId: ctx.config.kmeId,
      brokerId: broker,
      challenge: Buffer.from(challenge, 'base64'),
      expiresAt: Math.floor(expiresAt / 1000),
    });
    if (!verifyChallenge(message, Buffer.from(signature, 'base64'), publicKey)) return refuse(me, 'signature');
    if (!ctx.store.isActiveBroker(broker)) throw new KmsError('KMS_ERR_NOT_FOUND', `broker ${broker}`);
    const { keyId, key } = ctx.appSessions.issue(me, broker);
    try {
      return {
        key_ID: keyId,
        wrapped_key: Buffer.from(wrapSessionKey(key, publicKey)).toString('base64'),
        broker_id: broker,
      };
    } finally {
      key.fill(0);
    }
  });
}

/** Broker group: ETSI GS QKD 014 §5.3 Get key with key IDs, the app as the master SAE and the broker as the slave. */
export function brokerAppKeyRoutes(app: RouteScope, ctx: KmsContext): void {
  app.post('/api/v1/apps/:SAE_ID/dec_keys', { schema: wire.appDecKeysRoute }, async (req) => {
    const ids = req.body.key_IDs.map((k) => k.key_ID);
    if (new Set(ids).size !== ids.length) throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_ID');
    const keys = ctx.appSessions.claim(req.params.SAE_ID, brokerId(req), ids);
    const out = { keys: keys.map((k) => ({ key_ID: k.keyId, key: Buffer.from(k.key).toString('base64') })) };
    for (const k of keys) k.key.fill(0);
    return out;
  });
}
