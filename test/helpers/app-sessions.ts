// Setup shared by the application-session tests (docs/PROTOCOL.md §22): app session keys filled from the QRNG
// emulator, and the policy under which applications receive device telemetry only sealed, in force at the broker.
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
