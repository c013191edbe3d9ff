// Broker configuration: defaults, precedence (file < env < flags), and refusals naming the key, where its value came
// from and what is allowed: unknown keys, wrong types, out-of-range values, from a file, the environment or flags.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BROKER_DEFAULTS, loadBrokerConfig, packetLimits } from '../../broker/config.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, tempDir } from '../helpers/kms.js';

const dir = tempDir('qkey-broker-config-');
afterAll(() => removeDir(dir));
let n = 0;
function file(content: string): string {
  const path = join(dir, `broker-${n++}.json`);
  writeFileSync(path, content);
  return path;
}
const fromFile = (content: unknown) =>
  loadBrokerConfig({}, { configFile: file(typeof content === 'string' ? content : JSON.stringify(content)), env: {} });

describe('loadBrokerConfig', () => {
  it('works with no configuration at all', () => {
    const c = loadBrokerConfig({}, { env: {} });
    expect(c.mqtt).toEqual({ port: 1883 });
    expect(c.concurrency).toBe(BROKER_DEFAULTS.concurrency);
    expect(c.tls).toBeNull();
    expect(c.persistence).toBe('sqlite'); // durable by default
    expect(c.rotation).toEqual({ messages: 10_000, bytes: 16 * 1024 * 1024, seconds: 3600 });
    expect(Object.isFrozen(c.rotation)).toBe(true);
    // Mosquitto's max_queued_messages default; a byte bound so that large payloads cannot multiply it.
    expect([c.maxQueuedMessages, c.maxQueuedBytes]).toEqual([1000, 16 * 1024 * 1024]);
  });

  it('derives the packet bound from maxPayload unless it is set: the largest sealed PUBLISH', () => {
    // Fixed header 1 + 4, topic 2 + 65,535, packet id 2, envelope header 10 and tag 16.
    expect(packetLimits(loadBrokerConfig({}, { env: {} })).maxPacketSize).toBe(262_144 + 65_570);
    expect(packetLimits(loadBrokerConfig({ maxPayload: 1000 }, { env: {} })).maxPacketSize).toBe(1000 + 65_570);
    expect(packetLimits(loadBrokerConfig({ maxPacketSize: 5000 }, { env: {} })).maxPacketSize).toBe(5000);
  });

  it('takes a file, then the environment, then explicit overrides; nested objects merge key by key', () => {
    const c = loadBrokerConfig(
      { brokerId: 'from-flag', rotation: { seconds: 60 } },
      {
        configFile: file(
          JSON.stringify({ concurrency: 500, logLevel: 'warn', brokerId: 'from-file', rotation: { messages: 7 } }),
        ),
        env: { QKEY_BROKER_LOG_LEVEL: 'error', QKEY_BROKER_ID: 'from-env', QKEY_BROKER_PORT: '1999' },
      },
    );
    expect([c.concurrency, c.logLevel, c.brokerId, c.mqtt]).toEqual([500, 'error', 'from-flag', { port: 1999 }]);
    expect(c.rotation).toEqual({ messages: 7, bytes: 16 * 1024 * 1024, seconds: 60 });
  });

  it.each([
    // unknown keys, with a suggestion when one is close
    [{ concurency: 5 }, /"concurency" \(from config file .*\) is not a known key; did you mean "concurrency"\?/],
    [{ prot: 24071 }, /"prot" \(from config file .*\) is not a known key\. Known keys: host, mqtt/],
    [{ rotation: { mesages: 5 } }, /"rotation.mesages" .* is not a known key; did you mean "rotation.messages"\?/],
    [{ tls: { port: 8883, cert: 'c', key: 'k', ca: 'x' } }, /"tls.ca" .* is not a known key/],
    // wrong types
    [{ concurrency: '5' }, /"concurrency" = "5" .* is not allowed: expected an integer from 1 to 1000000/],
    [{ concurrency: 1.5 }, /"concurrency" = 1.5 .* expected an integer from 1 to 1000000/],
    [{ mqtt: 1883 }, /"mqtt" = 1883 .* expected null \(off\) or an object with the keys port/],
    [{ topics: { uplink: 'devices/up' } }, /"topics.uplink" = "devices\/up" .* expected a string matching \\\{id\\\}/],
    [{ logLevel: 'verbose' }, /"logLevel" = "verbose" .* expected one of "fatal", "error", "warn", "info"/],
    // out of range
    [{ revocationPollMs: 0 }, /"revocationPollMs" = 0 .* expected an integer from 100 to 3600000/],
    [{ maxPayload: -1 }, /"maxPayload" = -1 .* expected an integer from 1 to 16777216/],
    [{ mqtt: { port: 70000 } }, /"mqtt.port" = 70000 .* expected an integer from 0 to 65535/],
    [{ rotation: { messages: 0 } }, /"rotation.messages" = 0 .* expected an integer from 1 to/],
    [{ semiSpaceMiB: 2048 }, /"semiSpaceMiB" = 2048 .* expected an integer from 0 to 1024/],
    [{ maxDownlinkPayload: 0 }, /"maxDownlinkPayload" = 0 .* expected an integer from 1 to 16777216/],
    [{ maxDownlinkPayload: 16 * 1024 * 1024 + 1 }, /"maxDownlinkPayload" = 16777217 .* expected an integer from 1/],
    [{ maxSubscriptionsPerClient: 0 }, /"maxSubscriptionsPerClient" = 0 .* expected an integer from 1/],
    [{ maxQueuedMessages: -1 }, /"maxQueuedMessages" = -1 .* expected an integer from 0 to 10000000/],
    [{ maxQueuedBytes: 1.5 }, /"maxQueuedBytes" = 1.5 .* expected an integer from 0/],
    [{ connectionLogLevel: 'trace' }, /"connectionLogLevel" = "trace" .* expected one of "info", "debug"/],
    [{ persistence: 'redis' }, /"persistence" = "redis" .* expected one of "memory", "sqlite"/],
    [{ maxPacketSize: 0 }, /"maxPacketSize" = 0 .* expected an integer from 1/],
    [{ maxPreConnectBytes: 1.5 }, /"maxPreConnectBytes" = 1.5 .* expected an integer from 1/],
    [{ maxTopicFiltersPerPacket: -1 }, /"maxTopicFiltersPerPacket" = -1 .* expected an integer from 1/],
    [{ clientCertificates: { tokenRequired: false } }, /"clientCertificates.ca" is missing/],
    [
      { clientCertificates: { ca: '/nonexistent/ca.pem' } },
      /"clientCertificates.ca" = "\/nonexistent\/ca.pem": cannot read/,
    ],
    // across keys
    [{ mqtt: null, tls: null, ws: null, wss: null }, /at least one MQTT listener must be on/],
    [{ maxQueuedBytes: 1024 }, /"maxQueuedBytes" \(1024\) is below the largest payload \(262144/],
    [
      { tls: { port: 8883, cert: '/nonexistent/cert.pem', key: '/nonexistent/key.pem' } },
      /"tls.cert" = "\/nonexistent\/cert.pem": cannot read that file \(ENOENT\)/,
    ],
    [{ wss: { port: 8884 } }, /"wss.cert" is missing \(wss from config file .*\); expected a non-empty string/],
  ])('refuses %j from a file, naming the key and what is allowed', (content, message) => {
    expect(() => fromFile(content)).toThrow(/^CONFIG_ERR_INVALID: /);
    expect(() => fromFile(content)).toThrow(message);
  });

  it('reports every bad key at once, one per line', () => {
    expect(() => fromFile({ concurency: 5, maxPayload: -1, revocationPollMs: 0 })).toThrow(
      /concurency[^\n]*\n {2}"maxPayload"[^\n]*\n {2}"revocationPollMs"/,
    );
  });

  it('checks the environment and flags the same way, naming the variable', () => {
    expect(() => loadBrokerConfig({}, { env: { QKEY_BROKER_PORT: 'abc' } })).toThrow(
      /"mqtt.port" = "abc" \(from environment variable QKEY_BROKER_PORT\) is not allowed: expected an integer from 0 to 65535/,
    );
    expect(() => loadBrokerConfig({}, { env: { QKEY_KMS_URL: 'ftp://x' } })).toThrow(
      /"kmsUrl".*QKEY_KMS_URL.*\^https\?:\/\//,
    );
    expect(() => loadBrokerConfig({ maxPayload: 0 }, { env: {} })).toThrow(
      /"maxPayload" = 0 \(from a command-line flag/,
    );
  });

  it('never repeats a secret in a refusal', () => {
    expect(() => loadBrokerConfig({}, { env: { QKEY_BROKER_SECRET: 'x'.repeat(300) } })).toThrow(
      /^CONFIG_ERR_INVALID: "brokerSecret" \(from environment variable QKEY_BROKER_SECRET\) is not allowed/,
    );
  });

  it.each([
    ['not JSON', '{"concurrency": 5,', /^CONFIG_ERR_NOT_JSON: config file .* is not JSON/],
    ['JSON but not an object', '[1, 2]', /^CONFIG_ERR_INVALID: config file .* must hold a JSON object/],
    ['JSON null', 'null', /^CONFIG_ERR_INVALID: config file .* must hold a JSON object/],
    ['a "__proto__" key', '{"__proto__": {"concurrency": 0}}', /"__proto__" .* is not a known key/],
    [
      'an enormous file',
      `{"topics": {"uplink": "${'x'.repeat(2 * 1024 * 1024)}"}}`,
      /^CONFIG_ERR_TOO_LARGE: .* larger than 1048576 bytes/,
    ],
    [
      'deep nesting under an unknown key',
      `{"x": ${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
      /"x" .* is not a known key/,
    ],
  ])('refuses a config file that is %s', (_what, content, message) => {
    expect(() => fromFile(content)).toThrow(message);
  });

  it.each([
    ['/nonexistent/broker.json', /^CONFIG_ERR_UNREADABLE: cannot read config file \/nonexistent\/broker.json: ENOENT/],
    ['/dev/zero', /^CONFIG_ERR_UNREADABLE: config file \/dev\/zero is not a regular file/],
    ['/tmp', /^CONFIG_ERR_UNREADABLE: config file \/tmp is not a regular file/],
  ])('refuses %s as a config file', (path, message) => {
    expect(() => loadBrokerConfig({}, { configFile: path, env: {} })).toThrow(message);
  });

  it('qkey broker refuses a bad config file with exit 1 before starting anything', async () => {
    const r = await runQkey('broker', '--port', '0', '--http-port', 'off', '--config', file('{"prot": 24071}'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^qkey broker: CONFIG_ERR_INVALID: "prot" \(from config file .*\) is not a known key/);
    expect(r.out).not.toMatch(/listening/);
  });
});
