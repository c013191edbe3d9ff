// Mosquitto, the reference broker, as a child process on a free loopback port with extra configuration lines.
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { removeDir, tempDir } from './kms.js';
import { freePort } from './ports.js';

export interface Mosquitto {
  url: string;
  stop(): Promise<void>;
}

const BIN = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';

/** Starts `mosquitto -c <conf>` (anonymous, no persistence, plus `lines`) and resolves once it accepts clients. */
export async function startMosquitto(lines: string[] = []): Promise<Mosquitto> {
  const dir = tempDir('qkey-mosquitto-');
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', ...lines, ''].join('\n'),
  );
  const proc = spawn(BIN, ['-c', conf], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const url = `mqtt://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      await (await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 1000 })).endAsync();
      break;
    } catch (err) {
      if (i > 50) {
        proc.kill();
        removeDir(dir);
        throw err;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    url,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill();
      await exited;
      removeDir(dir);
    },
  };
}
