// The Brokers page against a real broker: its /metrics read by the console show the connected device, the uplink
// messages it opened, a replay it refused, and that it reaches the key service.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closed, systemOn, type TestSystem } from '../helpers/system.js';
import { startTestKms } from '../helpers/kms.js';
import { ConsoleBrowser } from './client.js';
import { freePort } from '../helpers/ports.js';

let sys: TestSystem;

beforeAll(async () => {
  const port = await freePort();
  const kms = await startTestKms({
    console: { enabled: true, brokerMetrics: [`http://127.0.0.1:${port}/metrics`] },
  });
  sys = await systemOn(kms, { http: { port } });
}, 30_000);
afterAll(async () => sys?.stop());

describe('live broker figures', () => {
  it('shows what the broker counted: clients, messages up, refusals by reason, key service reachable', async () => {
    const chip = await sys.device('dev-live');
    const c = await sys.connectDevice(chip);
    const topic = 'devices/dev-live/up/t';
    const envelope = Buffer.from(chip.sealUplink(Buffer.from('{"ok":true}'), topic));
    await c.publishAsync(topic, envelope, { qos: 1 });
    await c.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from('{"ok":2}'), topic)), { qos: 1 });
    const live = await sys.connectDevice(await sys.device('dev-live-2'));
    c.publish(topic, envelope, { qos: 1 }); // replayed: refused, and the connection closed
    await closed(c);

    const b = new ConsoleBrowser(sys.kms.url);
    expect((await b.login('test-admin-token')).status).toBe(303);
    const page = await b.get('/console/brokers');
    const figures = page.flat.slice(page.flat.indexOf('Live figures'));
    // dev-live-2 is connected; dev-live's refused connection may still be closing on the broker's side.
    const row =
      /<td class="num">(\d+)<br><span class="muted">device (\d+)<\/span><\/td><td class="num">(\d+)<\/td>/.exec(
        figures,
      );
    expect(row, figures).not.toBeNull();
    expect(Number(row![1])).toBeGreaterThanOrEqual(1);
    expect(Number(row![3])).toBe(2); // the two uplink messages opened
    expect(figures).toContain('<li>uplink: replay<strong>1</strong></li>');
    expect(figures).toContain('<span class="yes">reachable</span>');
    // The registered broker is listed too, with the test system's id.
    expect(page.flat).toContain('<code>test-broker</code>');
    await live.endAsync();
  });
});
