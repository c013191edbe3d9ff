// Broker configuration: defaults, precedence (file < env < flags) and refusals of bad values.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BROKER_DEFAULTS, loadBrokerConfig, packetLimits } from '../../broker/config.js';
import { removeDir, tempDir } from '../helpers/kms.js';

describe('loadBrokerConfig', () => {
  it('works with no configuration at all', () => {
    const c = loadBrokerConfig({}, { env: {} });
    expect(c.mqtt).toEqual({ port: 1883 });
    expect(c.concurrency).toBe(BROKER_DEFAULTS.concurrency);
  });

  it('derives the packet bound from maxPayload unless it is set: the largest sealed PUBLISH', () => {
    // Fixed header 1 + 4, topic 2 + 65,535, packet id 2, envelope header 10 and tag 16.
    expect(packetLimits(loadBrokerConfig({}, { env: {} })).maxPacketSize).toBe(262_144 + 65_570);
    expect(packetLimits(loadBrokerConfig({ maxPayload: 1000 }, { env: {} })).maxPacketSize).toBe(1000 + 65_570);
    expect(packetLimits(loadBrokerConfig({ maxPacketSize: 5000 }, { env: {} })).maxPacketSize).toBe(5000);
  });

  it('takes a file, then the environment, then explicit overrides', () => {
    const dir = tempDir();
    try {
      const file = join(dir, 'broker.json');
      writeFileSync(file, JSON.stringify({ concurrency: 500, logLevel: 'warn', brokerId: 'from-file' }));
      const c = loadBrokerConfig(
        { brokerId: 'from-flag' },
        { configFile: file, env: { QKEY_BROKER_LOG_LEVEL: 'error', QKEY_BROKER_ID: 'from-env' } },
      );
      expect([c.concurrency, c.logLevel, c.brokerId]).toEqual([500, 'error', 'from-flag']);
    } finally {
      removeDir(dir);
    }
  });

  it.each([
    [{ concurrency: 0 }, /concurrency must be a positive integer/],
    [{ concurrency: 1.5 }, /concurrency must be a positive integer/],
    [{ mqtt: { port: 70000 } }, /mqtt.port must be 0..65535/],
    [{ mqtt: null, tls: null, ws: null, wss: null }, /at least one MQTT listener/],
    [{ rotation: { messages: 0, bytes: 1, seconds: 1 } }, /rotation.messages must be positive/],
    [{ semiSpaceMiB: -1 }, /semiSpaceMiB must be an integer from 0 to 1024/],
    [{ semiSpaceMiB: 2048 }, /semiSpaceMiB must be an integer from 0 to 1024/],
    [{ maxDownlinkPayload: 0 }, /maxDownlinkPayload must be an integer from 1 to 16777216/],
    [{ maxDownlinkPayload: 16 * 1024 * 1024 + 1 }, /maxDownlinkPayload must be an integer from 1 to 16777216/],
    [{ maxSubscriptionsPerClient: 0 }, /maxSubscriptionsPerClient must be a positive integer/],
    [{ connectionLogLevel: 'trace' as 'info' }, /connectionLogLevel must be 'info' or 'debug'/],
    [{ maxPacketSize: 0 }, /maxPacketSize must be an integer from 1/],
    [{ maxPreConnectBytes: 1.5 }, /maxPreConnectBytes must be an integer from 1/],
    [{ maxTopicFiltersPerPacket: -1 }, /maxTopicFiltersPerPacket must be an integer from 1/],
  ])('refuses %j', (overrides, message) => {
    expect(() => loadBrokerConfig(overrides, { env: {} })).toThrow(message);
  });

  it('names an unreadable config file', () => {
    expect(() => loadBrokerConfig({}, { configFile: '/nonexistent/broker.json', env: {} })).toThrow(
      /cannot read \/nonexistent\/broker.json/,
    );
  });
});
