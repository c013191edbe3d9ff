// `qkey admin ...`: the administrator's commands over the key service's admin API.
import { type AuditJson, KmsClient } from '../kms-api/client.js';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { adminTokenFrom, namedAdminRefusal } from './admin-token.js';
import { POLICY_OPTIONS, POLICY_USAGE, runPolicyCommand } from './admin-policy.js';
import { APP_KEYS_OPTIONS, APP_KEYS_USAGE, AppKeyFillError, runAppKeysCommand } from './admin-app-keys.js';
import { QrngHealthError } from '../hsm-emulator/qrng.js';
import { isAppSm2PublicKey } from '../protocol/index.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  idArgument,
  intFlag,
  kmsUrlFrom,
  leadingWords,
  narrowUsage,
  parseCommandLine,
  sharedFailure,
  UsageError,
  wantsHelp,
} from './io.js';

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
  app add <id> [--publish <filter>]... [--subscribe <filter>]... [--sm2-public-key <hex>]
                                        register an application; prints the client secret once; an SM2 public
                                        key (04 || x || y, 130 hex digits) opts it in to session keys
  app list                              applications and their topic permissions
  app revoke <id>                       revoke an application: its tokens stop working
${APP_KEYS_USAGE}
  broker add <id> [--cert-fingerprint <sha256> | --cert-subject <dn>]
                                        prints the client secret once; a TLS client certificate with this
                                        SHA-256 fingerprint (hex, colons optional) or subject (RFC 4514, e.g.
                                        CN=broker-1,O=Example) then identifies the broker without a token
  broker list                           registered brokers
  broker revoke <id>                    revoke a broker: its tokens stop working
  pools [--low]                         unused keys per device and fill batches pending too long;
                                        --low: only devices below low-water
  audit [--device <id>] [--action <a>] [--limit <n>] [--before <id> | --after <id> | --all]
                                        the audit log, newest first, --limit entries (default 100, at most
                                        1000); says when there are older ones: page back with --before <id>,
                                        or --all for everything; --after <id> reads oldest first from an id
${POLICY_USAGE}

  --kms <url>    key service (default ${DEFAULT_KMS_URL}; env QKEY_KMS_URL)
  --token <t>    admin token (env QKEY_ADMIN_TOKEN; default: read <data>/admin-token)
  --data <dir>   the key service's data folder, to find the admin token (default ./data)
  --json         print the API's JSON instead of text
Exit status: 0 ok, 1 refused by the key service (its error code is printed), 2 usage error, 3 key service
unreachable; app-keys fill also exits 1 when the QRNG fails its health tests (nothing of that batch is sent).`;

const OPTIONS = {
  kms: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string', default: KMS_DEFAULTS.dataDir },
  json: { type: 'boolean' },
  serial: { type: 'string' },
  reason: { type: 'string' },
  after: { type: 'string' },
  before: { type: 'string' },
  all: { type: 'boolean' },
  limit: { type: 'string' },
  publish: { type: 'string', multiple: true },
  subscribe: { type: 'string', multiple: true },
  low: { type: 'boolean' },
  device: { type: 'string' },
  action: { type: 'string' },
  'cert-fingerprint': { type: 'string' },
  'cert-subject': { type: 'string' },
  'sm2-public-key': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  ...POLICY_OPTIONS,
  ...APP_KEYS_OPTIONS,
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

function brokerCertificate(fingerprint: string | undefined, subject: string | undefined) {
  if (fingerprint !== undefined && subject !== undefined)
    throw new UsageError('give --cert-fingerprint or --cert-subject, not both');
  if (fingerprint !== undefined) return { cert_fingerprint: normalizeFingerprint(fingerprint) };
  if (subject !== undefined) return { cert_subject: subject };
  return undefined;
}

/** An SM2 public key option, checked on the curve before the key service is asked. */
function sm2PublicKey(hex: string | undefined): { sm2_public_key?: string } {
  if (hex === undefined) return {};
  if (!isAppSm2PublicKey(hex.toLowerCase()))
    throw new UsageError('--sm2-public-key must be an SM2 point on the curve: 04 || x || y, 130 hex digits');
  return { sm2_public_key: hex.toLowerCase() };
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

/** Newest first below --before (default: from the newest); oldest first from --after; every page with --all. */
async function readAudit(
  client: KmsClient,
  values: { after?: string; before?: string; all?: boolean; device?: string; action?: string },
  limit: number | undefined,
): Promise<AuditJson> {
  if (values.after !== undefined && values.before !== undefined)
    throw new UsageError('give --after or --before, not both');
  const filters = {
    ...(values.device ? { device_id: values.device } : {}),
    ...(values.action ? { action: values.action } : {}),
  };
  const pageSize = values.all ? 1000 : (limit ?? 100);
  const cursor =
    values.after !== undefined
      ? { after: intFlag(values.after, 'after', 0, Number.MAX_SAFE_INTEGER) }
      : {
          before:
            values.before === undefined
              ? Number.MAX_SAFE_INTEGER
              : intFlag(values.before, 'before', 1, Number.MAX_SAFE_INTEGER),
        };
  const entries: AuditJson['entries'] = [];
  let page = await client.audit({ ...cursor, ...filters, limit: pageSize });
  entries.push(...page.entries);
  while (values.all && page.next !== undefined) {
    const next = 'after' in cursor ? { after: page.next } : { before: page.next };
    page = await client.audit({ ...next, ...filters, limit: pageSize });
    entries.push(...page.entries);
  }
  return { entries, ...(page.next !== undefined && !values.all ? { next: page.next } : {}) };
}

export async function runAdminCommand(argv: string[], io: CliIo): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(narrowUsage(ADMIN_USAGE, 'admin', leadingWords(argv)));
    return EXIT_OK;
  }
  const { values, positionals } = parseCommandLine(argv, { options: OPTIONS, allowPositionals: true });
  if (positionals.length === 0) {
    io.err(ADMIN_USAGE);
    return EXIT_USAGE;
  }
  const token = adminTokenFrom(values.token, values.data);
  try {
    const client = new KmsClient(kmsUrlFrom(values.kms, DEFAULT_KMS_URL), { token: token.token });
    const limit = values.limit === undefined ? undefined : intFlag(values.limit, 'limit', 1, 1000);
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
                ...sm2PublicKey(values['sm2-public-key']),
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
        const r = await readAudit(client, values, limit);
        const more =
          r.next === undefined
            ? ''
            : values.after !== undefined
              ? `\n(there are newer entries: --after ${r.next}, or --all)`
              : `\n(there are older entries: --before ${r.next}, or --all)`;
        print(
          r,
          () =>
            table(
              r.entries.map((e) => ({
                ...e,
                at: new Date(e.at).toISOString(),
                detail: e.detail ? JSON.stringify(e.detail) : '',
              })),
              ['id', 'at', 'actor', 'action', 'device_id', 'detail'],
            ) + more,
        );
        break;
      }
      default:
        if (resource === 'app-keys') {
          await runAppKeysCommand(action, values, client, print);
          break;
        }
        if (resource === 'policy') {
          await runPolicyCommand(action, positionals, values, client, print, table);
          break;
        }
        throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
    return EXIT_OK;
  } catch (err) {
    if (err instanceof AppKeyFillError) return appKeyFillFailure(err, token, io);
    const failed = namedAdminRefusal(err, token);
    const status = sharedFailure(failed, 'qkey admin', io);
    if (status !== undefined) return status;
    throw failed;
  }
}

/** A fill that stopped at a batch: the key service's answer, and the batches filled before it (they stay). */
function appKeyFillFailure(err: AppKeyFillError, token: ReturnType<typeof adminTokenFrom>, io: CliIo): number {
  const failed = namedAdminRefusal(err.reason, token);
  const before =
    err.filled.length === 0 ? 'nothing was filled' : `batches filled before it stay filled: ${err.filled.join(', ')}`;
  let status: number | undefined;
  if (failed instanceof QrngHealthError) {
    io.err(`qkey admin app-keys fill: ${failed.message}`);
    status = EXIT_FAILURE;
  } else status = sharedFailure(failed, 'qkey admin app-keys fill', io);
  if (status === undefined) throw failed;
  io.err(`qkey admin app-keys fill: ${before}`);
  return status;
}
