// Typed HTTP client for the key service (admin CLI, filling machine, broker, simulator, tests), on Node's built-in fetch.

import type {
  AuditJson,
  AuditQuery,
  BatchJson,
  BatchRequest,
  ClientJson,
  DeviceJson,
  DeviceKeysJson,
  DeviceListJson,
  DeviceRevokedJson,
  PoolsJson,
  RegisterAppRequest,
  RegisterBrokerRequest,
} from './admin-schemas.js';
import type {
  ChallengeJson,
  ClientGrant,
  DeviceGrant,
  RevocationsJson,
  TokenKeysJson,
  TokenResponse,
} from './auth-schemas.js';
import type { ErrorBody } from './common-schemas.js';
import type { PolicyBodyJson, PolicyEntryJson, PolicyFeedJson, PolicyTableJson } from './policy-schemas.js';
import type { DecKeysRequest, EncKeysRequest, KeyContainer, KeyStatusJson, RetireRequest } from './etsi-schemas.js';

export type { DeliveredKeyJson, KeyStatusJson } from './etsi-schemas.js';
export type { TokenResponse } from './auth-schemas.js';

/** Proof of use of an uplink key: an envelope sealed under it, as received (docs/KMS-API.md). */
export interface UplinkProof {
  envelope: Uint8Array;
  topic: string;
  direction: 'up' | 'will';
}
export type { AuditJson, BatchJson, ClientJson, DeviceJson, KeyStateJson } from './admin-schemas.js';

/** The key service answered with an error body (ETSI 014 {message, details} plus our code). */
export class KmsHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown[] = [],
  ) {
    super(message);
    this.name = 'KmsHttpError';
  }
}

/** The key service could not be reached or did not answer in time. */
export class KmsUnreachableError extends Error {
  readonly code = 'KMS_UNREACHABLE';
  constructor(url: string, cause: unknown) {
    super(`key service unreachable at ${url}: ${(cause as Error)?.message ?? cause}`);
    this.name = 'KmsUnreachableError';
  }
}

export interface KmsClientOptions {
  /** A bearer token, or a function returning the current one (for tokens that are renewed). */
  token?: string | (() => string);
  timeoutMs?: number;
}

export class KmsClient {
  readonly baseUrl: string;
  private readonly token: string | (() => string) | undefined;
  private readonly timeoutMs: number;

  constructor(baseUrl: string, options: KmsClientOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  withToken(token: string | (() => string)): KmsClient {
    return new KmsClient(this.baseUrl, { token, timeoutMs: this.timeoutMs });
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = `${this.baseUrl}${path}`;
    let res: Response;
    let text: string;
    // A timer cleared on completion rather than AbortSignal.timeout(): that one fires for every request, done or
    // not, and builds a DOMException each time (visible in the broker's profile after a 10,000-device storm).
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
    try {
      res = await fetch(url, {
        method,
        headers: {
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(this.token
            ? { authorization: `Bearer ${typeof this.token === 'function' ? this.token() : this.token}` }
            : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: abort.signal,
      });
      text = await res.text();
    } catch (err) {
      throw new KmsUnreachableError(this.baseUrl, err);
    } finally {
      clearTimeout(timer);
    }
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = (json ?? {}) as Partial<ErrorBody>;
      throw new KmsHttpError(
        res.status,
        e.code ?? `HTTP_${res.status}`,
        e.message ?? (text.slice(0, 200) || res.statusText),
        e.details,
      );
    }
    return json as T;
  }

  // --- auth ---
  challenge(deviceId: string) {
    return this.request<ChallengeJson>('POST', '/api/v1/auth/challenge', { device_id: deviceId });
  }
  deviceToken(deviceId: string, challenge: string, mac: string) {
    const grant: DeviceGrant = { grant_type: 'device_challenge', device_id: deviceId, challenge, mac };
    return this.request<TokenResponse>('POST', '/api/v1/auth/token', grant);
  }
  clientToken(clientId: string, clientSecret: string) {
    const grant: ClientGrant = { grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret };
    return this.request<TokenResponse>('POST', '/api/v1/auth/token', grant);
  }
  tokenKeys() {
    return this.request<TokenKeysJson>('GET', '/api/v1/auth/keys');
  }
  revocations(after: number) {
    return this.request<RevocationsJson>('GET', `/api/v1/revocations?after=${after}`);
  }

  // --- ETSI GS QKD 014 ---
  status(saeId: string) {
    return this.request<KeyStatusJson>('GET', `/api/v1/keys/${encodeURIComponent(saeId)}/status`);
  }
  encKeys(saeId: string, number: number, sessionId?: string) {
    const body: EncKeysRequest = {
      number,
      size: 128,
      ...(sessionId ? { extension_mandatory: [{ qkey_session_id: sessionId }] } : {}),
    };
    return this.request<KeyContainer>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/enc_keys`, body);
  }
  /** ETSI 014 dec_keys; `proofs[i]`, when given, is the proof of use of `keyIds[i]` (docs/KMS-API.md). */
  decKeys(saeId: string, keyIds: string[], sessionId?: string, proofs: ReadonlyArray<UplinkProof | undefined> = []) {
    const body: DecKeysRequest = {
      key_IDs: keyIds.map((key_ID, i) => {
        const proof = proofs[i];
        if (!proof) return { key_ID };
        const envelope = Buffer.from(proof.envelope.buffer, proof.envelope.byteOffset, proof.envelope.byteLength);
        return {
          key_ID,
          key_ID_extension: {
            qkey_proof: { envelope: envelope.toString('base64'), topic: proof.topic, direction: proof.direction },
          },
        };
      }),
      ...(sessionId ? { key_IDs_extension: { qkey_session_id: sessionId } } : {}),
    };
    return this.request<KeyContainer>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/dec_keys`, body);
  }
  retire(saeId: string, keyIds: string[]) {
    const body: RetireRequest = { key_IDs: keyIds.map((key_ID) => ({ key_ID })) };
    return this.request<{ retired: number }>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/retire`, body);
  }

  // --- admin ---
  registerDevice(deviceId: string, serial?: string) {
    return this.request<DeviceJson>('POST', '/api/v1/admin/devices', {
      device_id: deviceId,
      ...(serial ? { serial } : {}),
    });
  }
  listDevices(after?: string, limit?: number) {
    const q = new URLSearchParams({ ...(after ? { after } : {}), ...(limit ? { limit: String(limit) } : {}) });
    return this.request<DeviceListJson>('GET', `/api/v1/admin/devices?${q}`);
  }
  device(deviceId: string) {
    return this.request<DeviceJson>('GET', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}`);
  }
  revokeDevice(deviceId: string, reason?: string) {
    return this.request<DeviceRevokedJson>(
      'POST',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/revoke`,
      reason ? { reason } : {},
    );
  }
  deviceKeys(deviceId: string) {
    return this.request<DeviceKeysJson>('GET', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/keys`);
  }
  registerBatch(deviceId: string, batch: BatchRequest) {
    return this.request<BatchJson>('POST', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches`, batch);
  }
  batch(deviceId: string, batchId: string) {
    return this.request<BatchJson>(
      'GET',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches/${encodeURIComponent(batchId)}`,
    );
  }
  batches(deviceId: string, state?: 'pending' | 'committed' | 'cancelled') {
    return this.request<{ batches: BatchJson[] }>(
      'GET',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches${state ? `?state=${state}` : ''}`,
    );
  }
  commitBatch(deviceId: string, batchId: string) {
    return this.request<BatchJson>(
      'POST',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches/${encodeURIComponent(batchId)}/commit`,
    );
  }
  cancelBatch(deviceId: string, batchId: string) {
    return this.request<BatchJson>(
      'POST',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches/${encodeURIComponent(batchId)}/cancel`,
    );
  }
  registerApp(appId: string, acl?: Omit<RegisterAppRequest, 'app_id'>) {
    const body: RegisterAppRequest = { app_id: appId, ...acl };
    return this.request<{ app_id: string; client_secret: string }>('POST', '/api/v1/admin/apps', body);
  }
  /** A broker; `cert` records the TLS client certificate that identifies it (ETSI GS QKD 014 SAE). */
  registerBroker(brokerId: string, cert?: Omit<RegisterBrokerRequest, 'broker_id'>) {
    const body: RegisterBrokerRequest = { broker_id: brokerId, ...cert };
    return this.request<{ broker_id: string; client_secret: string }>('POST', '/api/v1/admin/brokers', body);
  }
  async listClients(role: 'app' | 'broker'): Promise<ClientJson[]> {
    if (role === 'app') return (await this.request<{ apps: ClientJson[] }>('GET', '/api/v1/admin/apps')).apps;
    return (await this.request<{ brokers: ClientJson[] }>('GET', '/api/v1/admin/brokers')).brokers;
  }
  revokeClient(role: 'app' | 'broker', id: string) {
    return this.request<{ state: 'revoked' }>('POST', `/api/v1/admin/${role}s/${encodeURIComponent(id)}/revoke`);
  }
  pools(lowOnly = false) {
    return this.request<PoolsJson>('GET', `/api/v1/admin/pools${lowOnly ? '?low_only=true' : ''}`);
  }
  audit(query: AuditQuery = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    return this.request<AuditJson>('GET', `/api/v1/admin/audit?${q}`);
  }

  // --- policy table (kms-api/policy-schemas.ts) ---
  /** Broker: the table, or only its version when that is still `known`. */
  policyFeed(known: number) {
    return this.request<PolicyFeedJson>('GET', `/api/v1/policies?known=${known}`);
  }
  policies() {
    return this.request<PolicyTableJson>('GET', '/api/v1/admin/policies');
  }
  policy(policyId: string) {
    return this.request<PolicyEntryJson>('GET', `/api/v1/admin/policies/${encodeURIComponent(policyId)}`);
  }
  setPolicy(policyId: string, body: PolicyBodyJson) {
    return this.request<PolicyEntryJson>('PUT', `/api/v1/admin/policies/${encodeURIComponent(policyId)}`, body);
  }
  deletePolicy(policyId: string) {
    return this.request<{ policy_id: string; deleted: true; version: number }>(
      'DELETE',
      `/api/v1/admin/policies/${encodeURIComponent(policyId)}`,
    );
  }
}
