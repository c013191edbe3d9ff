// Waits at start for a key service that is not up yet (started in the same script, restarting), with backoff.
import { KmsClient, KmsUnreachableError } from '../kms-api/client.js';
import { backoffMs } from '../device-sim/simulated-device.js';

/** Nobody answers at that address (yet): worth waiting for. A TLS failure or any HTTP answer is not. */
function notListening(err: unknown): boolean {
  if (!(err instanceof KmsUnreachableError)) return false;
  return /ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|no answer within/.test(
    err.message,
  );
}

/**
 * Asks the key service's /healthz until something answers or `seconds` have passed, retrying after 0.25 s doubling
 * to 5 s and saying so once per attempt. Returns true when it answered (any answer: the start that follows reports
 * a refusal in its own words), false when the time ran out.
 */
export async function waitForKms(
  url: string,
  seconds: number,
  say: (line: string) => void,
  sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
): Promise<boolean> {
  const client = new KmsClient(url, { timeoutMs: 5000 });
  const deadline = Date.now() + seconds * 1000;
  for (let attempt = 0; ; attempt++) {
    try {
      await client.request('GET', '/healthz');
      return true;
    } catch (err) {
      if (!notListening(err)) return true;
      const wait = Math.min(backoffMs(attempt, 250, 5000), deadline - Date.now());
      if (wait <= 0) return false;
      say(`waiting for the key service: ${(err as Error).message}; next try in ${(wait / 1000).toFixed(1)} s`);
      await sleep(wait);
    }
  }
}
