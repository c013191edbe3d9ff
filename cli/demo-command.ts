// `qkey demo` (what `npm start` runs): the whole system on one machine with embedded defaults: key service,
// broker, demo devices on emulated chips filled from the QRNG, and a dashboard application, shown live.
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadBrokerConfig } from '../broker/config.js';
import { startBroker } from '../broker/server.js';
import { SimulatedApp } from '../device-sim/simulated-app.js';
import { SimulatedDevice } from '../device-sim/simulated-device.js';
import { SecurityChip } from '../hsm-emulator/chip.js';
import { FillingMachine } from '../hsm-emulator/filling-machine.js';
import { loadIssuerKey } from '../hsm-emulator/issuer-key.js';
import { Qrng } from '../hsm-emulator/qrng.js';
import { KmsClient, KmsHttpError } from '../kms-api/client.js';
import { loadKmsConfig } from '../key-service/config.js';
import { ensureDataDir } from '../key-service/data-dir.js';
import { lockDataDir } from '../key-service/lock.js';
import { readSecretFile, writeSecretFile } from '../common/secret-file.js';
import { startKms } from '../key-service/server.js';
import { type CliIo, EXIT_OK, intFlag, parseCommandLine, portFlag, stopRequested, wantsHelp } from './io.js';

export const DEMO_USAGE = `Usage: qkey demo [--devices <n>] [--interval <ms>] [--duration <s>] [--data <dir>]
                 [--kms-port <n>] [--mqtt-port <n>] [--http-port <n>]

Starts the key service and the broker with embedded defaults, fills demo chips from the QRNG (or tops up the
ones from a previous run), connects the devices and a dashboard application, and shows the traffic live.
Ctrl-C stops everything.
  --devices <n>    demo devices, 1 to 100 (default 4)
  --interval <ms>  telemetry period of each device, 50 to 3600000 ms (default 1000); the dashboard sends a
                   command every 5 periods, to the devices in turn
  --duration <s>   stop after that many seconds (default 0: run until Ctrl-C)
  --data <dir>     the demo's key service, chips and logs (default ./data)
  --kms-port, --mqtt-port, --http-port <n>   ports on 127.0.0.1 (defaults 7070, 1883, 9090; 0: any free one)
Downlink keys rotate after 2 commands, so the status line shows a rotation within the first minute.
Demo chips use the PIN in QKEY_DEMO_PIN (default "demo-pin"): demo only.`;

const OPTIONS = {
  devices: { type: 'string', default: '4' },
  interval: { type: 'string', default: '1000' },
  duration: { type: 'string', default: '0' },
  data: { type: 'string', default: './data' },
  'kms-port': { type: 'string', default: '7070' },
  'mqtt-port': { type: 'string', default: '1883' },
  'http-port': { type: 'string', default: '9090' },
  help: { type: 'boolean', short: 'h' },
} as const;

const POOL_LOW = 32;
const POOL_TARGET = 256;

/** A demo app's secret is shown once at registration, so it is kept in the data folder (0600). */
async function appSecret(admin: KmsClient, dataDir: string, appId: string): Promise<string> {
  const file = join(dataDir, `${appId}.secret`);
  const known = readSecretFile(file);
  if (known) return known;
  const { client_secret } = await admin.registerApp(appId);
  writeSecretFile(file, client_secret);
  return client_secret;
}

export async function runDemoCommand(argv: string[], io: CliIo): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(DEMO_USAGE);
    return EXIT_OK;
  }
  const { values } = parseCommandLine(argv, { options: OPTIONS });
  const count = intFlag(values.devices, 'devices', 1, 100);
  const interval = intFlag(values.interval, 'interval', 50, 3_600_000);
  const duration = intFlag(values.duration, 'duration', 0, 31_536_000);
  const ports = {
    kms: portFlag(values['kms-port'], 'kms-port'),
    mqtt: portFlag(values['mqtt-port'], 'mqtt-port'),
    http: portFlag(values['http-port'], 'http-port'),
  };
  const pin = process.env.QKEY_DEMO_PIN ?? 'demo-pin';
  const kmsConfig = loadKmsConfig({ dataDir: values.data, port: ports.kms, logLevel: 'info' }, { env: {} });
  const dataDir = kmsConfig.dataDir;
  // The demo keeps its own key service: created on the first run, reused (and checked for damage) afterwards.
  for (const item of ensureDataDir(dataDir)) io.out(`qkey demo: created ${item}`);
  const logDir = join(dataDir, 'logs');
  mkdirSync(logDir, { recursive: true, mode: 0o700 });
  const release = lockDataDir(dataDir);
  const stops: Array<() => Promise<void> | void> = [release];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await Promise.resolve(stop()).catch(() => undefined);
  };

  try {
    const kms = await startKms(kmsConfig, { logStream: createWriteStream(join(logDir, 'kms.log'), { flags: 'a' }) });
    stops.push(() => kms.close());
    const admin = new KmsClient(kms.url, { token: kms.context.adminToken });
    const broker = await startBroker(
      loadBrokerConfig(
        {
          dataDir,
          kmsUrl: kms.url,
          mqtt: { port: ports.mqtt },
          http: { port: ports.http },
          // Low, so the demo shows a downlink key rotation within its first minute (a device's third command).
          rotation: { messages: 2, bytes: 1 << 20, seconds: 600 },
        },
        { env: {} },
      ),
      {
        logger: pino(
          { level: 'info' },
          pino.destination({ dest: join(logDir, 'broker.log'), append: true, mkdir: true }),
        ),
      },
    );
    stops.push(() => broker.close());
    io.out(
      `qkey demo: key service ${kms.url}, broker ${broker.urls.mqtt}, metrics ${broker.urls.http}/metrics (logs in ${logDir})`,
    );

    // Chips: personalise and fill on the first run, top up low pools on later runs.
    const chipsDir = join(dataDir, 'chips');
    mkdirSync(chipsDir, { recursive: true, mode: 0o700 });
    const machine = new FillingMachine(new Qrng(), admin, { issuer: loadIssuerKey(dataDir) });
    const devices: SimulatedDevice[] = [];
    let commands = 0;
    let commandErrors = 0;
    for (let i = 1; i <= count; i++) {
      const id = `demo-device-${String(i).padStart(4, '0')}`;
      const path = join(chipsDir, `${id}.chip`);
      const chip = existsSync(path)
        ? SecurityChip.open(path, pin, { expectDevice: id })
        : SecurityChip.create(path, { deviceId: id, pin, serial: `DEMO-${i}` });
      stops.push(() => chip.close());
      const filled = await machine.topUp(chip, POOL_LOW, POOL_TARGET);
      const s = chip.status();
      io.out(
        `  ${id}: ${filled ? `filled ${filled.up} up + ${filled.down} down keys` : 'pools are fine'} (chip holds ${s.uplinkKeys} up, ${s.downlinkKeys} down)`,
      );
      const device = new SimulatedDevice(chip, {
        brokerUrl: broker.urls.mqtt!,
        kmsUrl: kms.url,
        onCommand: (c) => {
          commands++;
          io.out(`  ${id} <- command "${c}" (opened in the chip)`);
        },
        onError: (kind, err) => {
          commandErrors++;
          io.err(`  ${id}: ${kind} error: ${err.message}`);
        },
      });
      await device.connect();
      stops.push(() => device.disconnect());
      devices.push(device);
    }

    const dashboard = await SimulatedApp.connect(
      broker.urls.mqtt!,
      kms.url,
      'demo-dashboard',
      await appSecret(admin, dataDir, 'demo-dashboard'),
    );
    stops.push(() => dashboard.close());
    let received = 0;
    let shown = 0;
    await dashboard.onTelemetry((t) => {
      received++;
      if (shown++ < 2 * count)
        io.out(`  dashboard <- ${t.device} #${t.seq}: ${t.temperature} °C (${Date.now() - t.sentAt} ms)`);
    });

    const guestSecret = await appSecret(admin, dataDir, 'demo-guest').catch((err: unknown) => {
      if (err instanceof KmsHttpError) return null;
      throw err;
    });
    if (guestSecret) {
      const { access_token, expires_in } = await admin.clientToken('demo-guest', guestSecret);
      const { hostname, port } = new URL(broker.urls.mqtt!);
      io.out(`\nConnect your own client (app token valid ${expires_in / 60} min; telemetry arrives as plaintext):`);
      io.out(
        `  mosquitto_sub -h ${hostname} -p ${port} -i demo-guest/sub -u demo-guest -P '${access_token}' -t 'devices/+/up/#' -v`,
      );
      io.out(
        `  mosquitto_pub -h ${hostname} -p ${port} -i demo-guest/pub -u demo-guest -P '${access_token}' -t devices/${devices[0]!.id}/down/cmd -q 1 -m hello`,
      );
      io.out(
        `  mqtt.js: mqtt.connect('${broker.urls.mqtt}', { clientId: 'demo-guest/app', username: 'demo-guest', password: '<the token above>' })`,
      );
      io.out(`Ctrl-C stops the demo.\n`);
    }

    const ticker = setInterval(
      () => void Promise.all(devices.map((d) => d.publishTelemetry().catch(() => undefined))),
      interval,
    );
    let n = 0;
    const commander = setInterval(() => {
      const d = devices[n++ % devices.length]!;
      void dashboard.command(d.id, `set-interval ${interval}ms #${n}`).catch(() => undefined);
    }, interval * 5);
    const showStatus = async () => {
      const text = await broker.registry.metrics();
      const metric = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
      const pools = (
        await admin.pools().catch(() => ({ pools: [] as Array<{ device_id: string; up: number; down: number }> }))
      ).pools.filter((p) => p.device_id.startsWith('demo-device-'));
      io.out(
        `[status] online ${devices.filter((d) => d.connected).length}/${devices.length} | up ${devices.reduce((a, d) => a + d.stats.sent, 0)} sent, ${received} received | ` +
          `down ${commands} commands${commandErrors ? ` (${commandErrors} errors)` : ''} | rotations ${metric(/^broker_downlink_rotations_total (\d+)/m)} | ` +
          `refused ${metric(/^broker_publish_rejected_total\{[^}]*\} (\d+)/m)} | key-service pools min up ${Math.min(...pools.map((p) => p.up))}, down ${Math.min(...pools.map((p) => p.down))}`,
      );
    };
    const statusTimer = setInterval(() => void showStatus().catch(() => undefined), 5000);
    stops.push(() => {
      clearInterval(ticker);
      clearInterval(commander);
      clearInterval(statusTimer);
    });

    const watch = stopRequested();
    await Promise.race([
      watch.stopped,
      ...(duration > 0 ? [new Promise<void>((resolve) => setTimeout(resolve, duration * 1000).unref())] : []),
    ]);
    watch.dispose();
    io.out(
      `qkey demo: stopping (sent ${devices.reduce((a, d) => a + d.stats.sent, 0)}, dashboard received ${received}, commands ${commands})`,
    );
    await stopAll();
    return EXIT_OK;
  } catch (err) {
    await stopAll();
    throw err;
  }
}
