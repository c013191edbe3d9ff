// Setup shared by the application-session tests (docs/PROTOCOL.md §22): app session keys filled from the QRNG
// emulator, and the policy under which applications receive device telemetry only sealed, in force at the broker.
import { type AppMessageHandler, AppSession } from '../../device-sim/app-session.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { fillAppKeys } from '../../kms-api/app-session-client.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import type { TestSystem } from './system.js';

/** Fills `appKeys` keys into the app key pool and sets `apps-sealed`; resolves once the broker follows it. */
export async function sealTelemetryForApps(sys: Pick<TestSystem, 'kms' | 'broker'>, appKeys: number): Promise<void> {
  const qrng = new Qrng();
  const keys = Array.from({ length: appKeys }, () => Buffer.from(qrng.bytes(16)).toString('base64'));
  await fillAppKeys(sys.kms.admin, `qrng-${appKeys}`, keys);
  const { version } = await sys.kms.admin.setPolicy('apps-sealed', {
    role: 'app',
    filter: 'devices/+/up/#',
    encryption: 'required',
  });
  for (let i = 0; sys.broker.policy.current.version < version; i++) {
    if (i > 200) throw new Error('policy not picked up');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts application sessions (docs/PROTOCOL.md §22) on the system `sys()` returns, registering each app (an SM2 key
 * pair and the ACL `acl`) the first time its id is started; `closeAll` ends every session it started.
 */
export function appSessions(
  sys: () => Pick<TestSystem, 'kms' | 'mqttUrl'>,
  acl: { subscribe?: string[]; publish?: string[] } = { subscribe: ['devices/+/up/#'] },
) {
  const registered = new Map<string, { secret: string; sm2: { privateKey: string; publicKey: string } }>();
  const started: AppSession[] = [];
  return {
    async start(appId: string, o: { clean?: boolean; onMessage?: AppMessageHandler } = {}): Promise<AppSession> {
      let app = registered.get(appId);
      if (!app) {
        const sm2 = sm2KeyPair();
        const { client_secret } = await sys().kms.admin.registerApp(appId, { ...acl, sm2_public_key: sm2.publicKey });
        app = { secret: client_secret, sm2 };
        registered.set(appId, app);
      }
      const session = await AppSession.start({
        brokerUrl: sys().mqttUrl,
        kmsUrl: sys().kms.url,
        brokerId: 'test-broker',
        appId,
        secret: app.secret,
        sm2: app.sm2,
        clean: o.clean ?? true,
        ...(o.onMessage && { onMessage: o.onMessage }),
      });
      started.push(session);
      return session;
    },
    /** The client secret of an app this started. */
    secretOf: (appId: string) => registered.get(appId)!.secret,
    closeAll: () => Promise.all(started.map((s) => s.client.endAsync(true).catch(() => undefined))),
  };
}
