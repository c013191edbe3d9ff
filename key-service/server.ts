// Starts the key service: builds it, listens, and reports where (the URL is what `qkey kms` prints when ready).
import { type Kms, buildKms, type BuildOptions } from './app.js';
import type { KmsConfig } from './config.js';

export interface RunningKms extends Kms {
  url: string;
}

export async function startKms(config: Readonly<KmsConfig>, options: BuildOptions = {}): Promise<RunningKms> {
  const kms = await buildKms(config, options);
  try {
    await kms.app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await kms.close();
    throw err;
  }
  const address = kms.app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  return { ...kms, url: `${config.tls ? 'https' : 'http'}://${host}:${port}` };
}
