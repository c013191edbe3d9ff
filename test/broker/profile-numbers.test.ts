// The numbers docs/PROTOCOL.md gives a firmware team, read from the document and compared with the code that
// enforces them: the limits of §15.1 (against a running broker), the rotation limits of §17, the revocation poll of
// §18 and the device token lifetime of §13.1. Changing either side alone fails here.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BROKER_CONFIG_SCHEMA, BROKER_DEFAULTS, packetLimits } from '../../broker/config.js';
import { DEFAULT_ROTATION } from '../../broker/session-keys.js';
import { DEFAULT_UPLINK_ROTATION } from '../../hsm-emulator/chip.js';
import { KMS_DEFAULTS } from '../../key-service/config.js';
import { DEFAULT_MAX_PAYLOAD, ENVELOPE_OVERHEAD } from '../../protocol/index.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
const section = (from: string) => doc.slice(doc.indexOf(from), doc.indexOf('\n## ', doc.indexOf(from) + 4));
/** "262,144 bytes" -> 262144 */
const number = (text: string) => Number(/[\d,]+/.exec(text)![0].replaceAll(',', ''));

let sys: TestSystem;
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
});

describe('§15.1 limits', () => {
  const rows = [...section('### 15.1 ').matchAll(/^\| (.+?) +\| +([\d,]+ ?[a-z]*) +\| (.+?) +\|$/gm)].map((m) => ({
    limit: m[1]!,
    value: number(m[2]!),
  }));
  const aedes = () => sys.broker.aedes as unknown as Record<string, number>;
  const limits = packetLimits(BROKER_DEFAULTS);
  const actual: Record<string, () => number> = {
    'uplink payload, once opened (`maxPayload`)': () => BROKER_DEFAULTS.maxPayload,
    'command payload a device must accept (`maxDownlinkPayload`)': () => BROKER_DEFAULTS.maxDownlinkPayload,
    'MQTT packet once connected (`maxPacketSize`)': () => limits.maxPacketSize,
    'bytes before CONNACK: CONNECT, will, anything sent behind it (`maxPreConnectBytes`)': () =>
      limits.maxPreConnectBytes,
    'topic filters in one SUBSCRIBE or UNSUBSCRIBE (`maxTopicFiltersPerPacket`)': () => limits.maxTopicFiltersPerPacket,
    'subscriptions a client holds at once (`maxSubscriptionsPerClient`)': () =>
      BROKER_DEFAULTS.maxSubscriptionsPerClient,
    'QoS 2 messages from one client awaiting PUBREL': () => aedes().maxInflightInbound!,
    'levels in a topic name or filter': () => aedes().maxTopicLevels!,
    'time from opening the connection to CONNECT': () => aedes().connectTimeout! / 1000,
  };

  it('every row names a limit the code has, and no limit is left out', () => {
    expect(rows.map((r) => r.limit).sort()).toEqual(Object.keys(actual).sort());
  });

  it.each(rows.map((r) => [r.limit, r.value] as const))('%s: %i', (limit, value) => {
    expect(actual[limit]!()).toBe(value);
  });

  it('the derivation of the packet limit and the largest command envelope', () => {
    const text = section('### 15.1 ');
    expect(limits.maxPacketSize).toBe(5 + 2 + 65_535 + 2 + ENVELOPE_OVERHEAD + DEFAULT_MAX_PAYLOAD);
    expect(text).toContain(`${(DEFAULT_MAX_PAYLOAD + ENVELOPE_OVERHEAD).toLocaleString('en-US')} envelope bytes`);
  });
});

describe('§17 rotation limits', () => {
  const text = section('## 17. ');
  const uplink = text.slice(text.indexOf('**Uplink'), text.indexOf('**Downlink'));
  const downlink = text.slice(text.indexOf('**Downlink'));

  it("the chip's uplink limits", () => {
    expect(uplink).toContain(`**${DEFAULT_UPLINK_ROTATION.messages.toLocaleString('en-US')} messages**`);
    expect(uplink).toContain(`**${DEFAULT_UPLINK_ROTATION.bytes.toLocaleString('en-US')} payload bytes**`);
  });

  it("the broker's downlink limits and their configurable ranges", () => {
    expect(downlink).toContain(`**${DEFAULT_ROTATION.messages.toLocaleString('en-US')} messages**`);
    expect(downlink).toContain(`**${DEFAULT_ROTATION.bytes.toLocaleString('en-US')} payload bytes**`);
    expect(downlink).toContain(`**${DEFAULT_ROTATION.seconds.toLocaleString('en-US')} seconds**`);
    expect(BROKER_DEFAULTS.rotation).toEqual(DEFAULT_ROTATION);
    const r = BROKER_CONFIG_SCHEMA.properties.rotation.properties;
    expect([r.messages.minimum, r.messages.maximum]).toEqual([1, 2 ** 32]);
    expect([r.bytes.minimum, r.bytes.maximum]).toEqual([1, 2 ** 40]);
    expect([r.seconds.minimum, r.seconds.maximum]).toEqual([1, 2_592_000]);
    expect(downlink).toContain('messages 1 to 2^32, bytes 1 to 2^40, seconds 1 to 2,592,000');
  });
});

describe('§18 and §13.1', () => {
  it('the revocation feed is polled every second by default', () => {
    expect(BROKER_DEFAULTS.revocationPollMs).toBe(1000);
    expect(section('## 18. ')).toContain('every second by default');
  });

  it('device tokens last 600 seconds by default', () => {
    expect(KMS_DEFAULTS.tokenTtl.device).toBe(600);
    expect(section('### 13.1 ')).toContain('600 for devices');
    expect(section('## 18. ')).toContain('every 10 minutes');
  });
});
