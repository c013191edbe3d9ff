// `qkey admin ...`: the administrator's commands over the key service's admin API.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KmsClient, KmsHttpError, KmsUnreachableError } from '../kms-api/client.js';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { ADMIN_TOKEN_FILE, findAdminToken } from '../common/admin-token.js';
import { POLICY_OPTIONS, POLICY_USAGE, runPolicyCommand } from './admin-policy.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, idArgument, UsageError } from './io.js';

export const DEFAULT_KMS_URL = `http://127.0.0.1:${KMS_DEFAULTS.port}`;

export const ADMIN_USAGE = `Usage: qkey admin [--kms <url>] [--token <t>] [--data <dir>] [--json] <command>

Commands:
  device add <id> [--serial <s>]        register a device; ids (also of apps and brokers) are 1 to 128 of
                                        A-Z a-z 0-9 . _ : -, starting with a letter or digit
  device list [--after <id>] [--limit <n>]
  device show <id>                      state, pool levels, next key index, chip suites, pending fill
                                        batches (STALE once older than the key service's stalePendingSeconds)
  device revoke <id> [--reason <text>]  revoke: tokens stop working, unused keys are destroyed
  device keys <id>                      every key of the device and its state (never key bytes)
  app add <id> [--publish <filter>]... [--subscribe <filter>]...   prints the client secret once
  app list | app revoke <id>
  broker add <id> [--cert-fingerprint <sha256> | --cert-subject <dn>]
                                        prints the client secret once; a TLS client certificate with this
                                        SHA-256 fingerprint (hex, colons optional) or subject (RFC 4514, e.g.
                                        CN=broker-1,O=Example) then identifies the broker without a token
  broker list | broker revoke <id>
  pools [--low]                         unused keys per device and fill batches pending too long;
                                        --low: only devices below low-water
  audit [--device <id>] [--action <a>] [--after <n>] [--limit <n>]
${POLICY_USAGE}

  --kms <url>    key service (default ${DEFAULT_KMS_URL}; env QKEY_KMS_URL)
  --token <t>    admin token (env QKEY_ADMIN_TOKEN; default: read <data>/admin-token)
  --data <dir>   the key service's data folder, to find the admin token (default ./data)
  --json         print the API's JSON instead of text`;

const OPTIONS = {
  kms: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string', default: KMS_DEFAULTS.dataDir },
  json: { type: 'boolean' },
  serial: { type: 'string' },
  reason: { type: 'string' },
  after: { type: 'string' },
  limit: { type: 'string' },
  publish: { type: 'string', multiple: true },
  subscribe: { type: 'string', multiple: true },
  low: { type: 'boolean' },
  device: { type: 'string' },
  action: { type: 'string' },
  'cert-fingerprint': { type: 'string' },
  'cert-subject': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  ...POLICY_OPTIONS,
} as const;

/** A SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it (AB:CD:...), from any usual spelling. */
export function normalizeFingerprint(text: string): string {
  const hex = text
    .replace(/^sha256 fingerprint=/i, '')
    .replace(/[:\s]/g, '')
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex))
    throw new UsageError('--cert-fingerprint must be a SHA-256 fingerprint (64 hex digits)');
  return hex.match(/../g)!.join(':');
}

export function adminTokenFrom(flag: string | undefined, dataDir: string): string {
  const token = flag || findAdminToken(dataDir);
  if (token) return token;
  throw new UsageError(
    `no admin token: pass --token, set QKEY_ADMIN_TOKEN, or point --data at the key service's folder (${join(dataDir, ADMIN_TOKEN_FILE)} not found)`,
  );
}

function brokerCertificate(fingerprint: string | undefined, subject: string | undefined) {
  if (fingerprint !== undefined && subject !== undefined)
    throw new UsageError('give --cert-fingerprint or --cert-subject, not both');
  if (fingerprint !== undefined) return { cert_fingerprint: normalizeFingerprint(fingerprint) };
  if (subject !== undefined) return { cert_subject: subject };
  return undefined;
}

function need(positionals: string[], i: number, what: string): string {
  const v = positionals[i];
  if (!v) throw new UsageError(`missing ${what}`);
  return v;
}

/** An id to register: checked against the id rule here, before the key service is asked. */
function newId(positionals: string[], i: number, what: string): string {
  return idArgument(need(positionals, i, what), what);
}

function table(rows: Array<Record<string, unknown>>, columns: string[]): string {
  if (rows.length === 0) return '(none)';
  const cells = [
    columns,
    ...rows.map((r) => columns.map((c) => (r[c] === null || r[c] === undefined ? '-' : String(r[c])))),
  ];
  const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
  return cells
    .map((row) =>
      row
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export async function runAdminCommand(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    if (values.help || positionals.length === 0) {
      io.out(ADMIN_USAGE);
      return values.help ? EXIT_OK : EXIT_USAGE;
    }
    const client = new KmsClient(values.kms ?? process.env.QKEY_KMS_URL ?? DEFAULT_KMS_URL, {
      token: adminTokenFrom(values.token, values.data),
    });
    const limit = values.limit === undefined ? undefined : Number(values.limit);
    if (limit !== undefined && !(Number.isInteger(limit) && limit > 0))
      throw new UsageError('--limit must be a positive integer');
    const print = (json: unknown, text: () => string) => io.out(values.json ? JSON.stringify(json, null, 2) : text());
    const [resource, action] = positionals;
    const command = action ? `${resource} ${action}` : resource!;

    switch (command) {
      case 'device add': {
        const d = await client.registerDevice(newId(positionals, 2, 'device id'), values.serial);
        print(d, () => `registered device ${d.device_id}`);
        break;
      }
      case 'device list': {
        const r = await client.listDevices(values.after, limit);
        print(
          r,
          () =>
            table(
              r.devices.map((d) => ({ ...d, up: d.pool.up, down: d.pool.down })),
              ['device_id', 'state', 'serial', 'up', 'down', 'low'],
            ) + (r.next ? `\n(more: --after ${r.next})` : ''),
        );
        break;
      }
      case 'device show': {
        const d = await client.device(need(positionals, 2, 'device id'));
        print(d, () =>
          [
            `device      ${d.device_id}${d.serial ? ` (serial ${d.serial})` : ''}`,
            `state       ${d.state}${d.revoke_reason ? ` (${d.revoke_reason})` : ''}`,
            `login key   ${d.has_login_key ? 'filled' : 'none'}`,
            `pool        up ${d.pool.up}, down ${d.pool.down}${d.low ? '  LOW: re-fill this chip' : ''}`,
            `next index  ${d.next_key_index}`,
            `suites      ${d.suites ? d.suites.join(', ') : 'not recorded (SM4-GCM assumed)'}`,
            ...d.pending_batches.map(
              (b) =>
                `pending     batch ${b.batch_id} since ${new Date(b.created_at).toISOString()}${b.stale ? '  STALE: a fill stopped half-way; run the same qkey chip fill on this chip again to finish or cancel it' : ''}`,
            ),
          ].join('\n'),
        );
        break;
      }
      case 'device revoke': {
        const r = await client.revokeDevice(need(positionals, 2, 'device id'), values.reason);
        print(r, () => `revoked ${r.device_id}; ${r.destroyed_keys} unused keys destroyed`);
        break;
      }
      case 'device keys': {
        const r = await client.deviceKeys(need(positionals, 2, 'device id'));
        print(r, () =>
          table(
            r.keys.map((k) => ({ ...k })),
            ['key_index', 'direction', 'state', 'key_ID', 'claimed_by', 'claimed_session'],
          ),
        );
        break;
      }
      case 'app add':
      case 'broker add': {
        const role = resource as 'app' | 'broker';
        const id = newId(positionals, 2, role === 'app' ? 'application id' : 'broker id');
        const r =
          role === 'app'
            ? await client.registerApp(id, {
                ...(values.publish ? { publish: values.publish } : {}),
                ...(values.subscribe ? { subscribe: values.subscribe } : {}),
              })
            : await client.registerBroker(id, brokerCertificate(values['cert-fingerprint'], values['cert-subject']));
        print(r, () => `registered ${role} ${id}\nclient secret (shown once, store it now): ${r.client_secret}`);
        break;
      }
      case 'app list':
      case 'broker list': {
        const r = await client.listClients(resource as 'app' | 'broker');
        print(r, () =>
          table(
            r.map((c) => ({ ...c, publish: c.acl?.publish.join(','), subscribe: c.acl?.subscribe.join(',') })),
            resource === 'app'
              ? ['client_id', 'state', 'publish', 'subscribe']
              : ['client_id', 'state', 'cert_fingerprint', 'cert_subject'],
          ),
        );
        break;
      }
      case 'app revoke':
      case 'broker revoke': {
        const id = need(positionals, 2, `${resource} id`);
        const r = await client.revokeClient(resource as 'app' | 'broker', id);
        print(r, () => `revoked ${resource} ${id}`);
        break;
      }
      case 'pools': {
        const r = await client.pools(values.low);
        const stale = r.pools.filter((p) => p.stale_pending > 0);
        print(r, () =>
          [
            `low-water ${r.low_water}`,
            table(r.pools, ['device_id', 'up', 'down', 'low', 'stale_pending']),
            ...(stale.length > 0
              ? [
                  `${stale.length} device(s) have fill batches pending for over ${r.stale_pending_seconds} s (a fill stopped half-way): run the same qkey chip fill on ${stale.map((p) => p.device_id).join(', ')} again`,
                ]
              : []),
          ].join('\n'),
        );
        break;
      }
      case 'audit': {
        const r = await client.audit({
          ...(values.after ? { after: Number(values.after) } : {}),
          ...(limit ? { limit } : {}),
          ...(values.device ? { device_id: values.device } : {}),
          ...(values.action ? { action: values.action } : {}),
        });
        print(r, () =>
          table(
            r.entries.map((e) => ({
              ...e,
              at: new Date(e.at).toISOString(),
              detail: e.detail ? JSON.stringify(e.detail) : '',
            })),
            ['id', 'at', 'actor', 'action', 'device_id', 'detail'],
          ),
        );
        break;
      }
      default:
        if (resource === 'policy') {
          await runPolicyCommand(action, positionals, values, client, print, table);
          break;
        }
        throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
    return EXIT_OK;
  } catch (err) {
    if (err instanceof KmsHttpError) {
      io.err(`qkey admin: ${err.code}: ${err.message}`);
      return EXIT_FAILURE;
    }
    if (err instanceof KmsUnreachableError) {
      io.err(`qkey admin: ${err.message}`);
      return EXIT_FAILURE;
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.err(`qkey admin: ${(err as Error).message} (see qkey admin --help)`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
