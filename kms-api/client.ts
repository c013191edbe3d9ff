// Typed HTTP client for the key service (admin CLI, filling machine, broker, simulator, tests), on pooled keep-alive
// connections of Node's http/https agents (bench/kms-client.ts measures them against fetch).
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

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
import type { BulkAbandonItem, BulkClaimItem, BulkClaimsJson, BulkRetireItem, BulkRetireJson } from './bulk-schemas.js';
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
  constructor(
    url: string,
    cause: unknown,
    /**
     * The whole request had been written to a connection when it failed (a timeout, a connection closed before the
     * answer): the key service may have acted on it, or may still. False: it never had all of it, so it did not.
     */
    readonly maybeDelivered = false,
  ) {
    super(`key service unreachable at ${url}: ${causeChain(cause)}`);
    this.name = 'KmsUnreachableError';
  }
}

/** "connect ECONNREFUSED 127.0.0.1:7070": the message and the system's causes under it, each once. */
function causeChain(cause: unknown): string {
  const parts: string[] = [];
  let e = cause as { message?: string; code?: string; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 4; depth++, e = e.cause as typeof e) {
    const text = (
      e.code && !String(e.message).includes(e.code) ? `${e.code} ${e.message ?? ''}` : String(e.message ?? e)
    ).trim();
    if (text && !parts.includes(text)) parts.push(text);
  }
  return parts.join(': ') || String(cause);
}

export interface KmsClientOptions {
  /** A bearer token, or a function returning the current one (for tokens that are renewed). */
  token?: string | (() => string);
  timeoutMs?: number;
  /** Keep-alive connections to the key service at most, shared with clients of the same URL and count. */
  connections?: number;
}

/**
 * Connections to one key service at most, shared by the clients of a process. bench/kms-client.ts, 64 requests
 * in flight: 4, 16 and 64 connections within 10% of each other in requests/s and CPU per request (each about 0.35x
 * fetch's CPU); 16 leaves room for slow claims without holding many sockets at the key service.
 */
export const DEFAULT_KMS_CONNECTIONS = 16;

/** The keep-alive connections a client and its withToken copies share. */
export interface KmsTransport {
  url: URL;
  agent: HttpAgent;
  send: typeof httpRequest;
}

/**
 * One pool per key-service origin and connection count, shared by every client in the process (as fetch shares its
 * global dispatcher): a program making a client per device or per call still keeps a few connections, not one each.
 */
const transports = new Map<string, KmsTransport>();

function transportFor(baseUrl: string, connections: number): KmsTransport {
  const url = new URL(baseUrl);
  const name = `${url.origin} ${connections}`;
  const known = transports.get(name);
  if (known) return { ...known, url };
  const https = url.protocol === 'https:';
  if (!https && url.protocol !== 'http:') throw new Error(`key service URL must be http or https: ${baseUrl}`);
  // lifo: the most recently used connection first, so idle ones age out (Node closes a free socket shortly before
  // the server's advertised Keep-Alive timeout, so a request is never written to a connection the server closes).
  // Free sockets are unreferenced: an idle pool never keeps the process alive.
  const options = { keepAlive: true, maxSockets: connections, scheduling: 'lifo' as const };
  const transport = https
    ? { url, agent: new HttpsAgent(options), send: httpsRequest as typeof httpRequest }
    : { url, agent: new HttpAgent(options), send: httpRequest };
  transports.set(name, transport);
  return transport;
}

interface RawResponse {
  status: number;
  statusText: string;
  text: string;
}

/** ETSI 014 enc_keys body; the session id travels as a mandatory extension (§6.2). */
export function encKeysBody(number: number, sessionId?: string): EncKeysRequest {
  return { number, size: 128, ...(sessionId ? { extension_mandatory: [{ qkey_session_id: sessionId }] } : {}) };
}

/** ETSI 014 dec_keys body; `proofs[i]`, when given, is the proof of use of `keyIds[i]` (docs/KMS-API.md). */
export function decKeysBody(
  keyIds: string[],
  sessionId?: string,
  proofs: ReadonlyArray<UplinkProof | undefined> = [],
): DecKeysRequest {
  return {
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
}

export class KmsClient {
  readonly baseUrl: string;
  private readonly token: string | (() => string) | undefined;
  private readonly timeoutMs: number;
  private readonly transport: KmsTransport;

  constructor(baseUrl: string, options: KmsClientOptions = {}, transport?: KmsTransport) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.transport = transport ?? transportFor(this.baseUrl, options.connections ?? DEFAULT_KMS_CONNECTIONS);
  }

  /** The same key service and connections, with another credential. */
  withToken(token: string | (() => string)): KmsClient {
    return new KmsClient(this.baseUrl, { token, timeoutMs: this.timeoutMs }, this.transport);
  }

  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.requestJson<T>(method, path, body === undefined ? undefined : JSON.stringify(body));
  }

  /** A request whose body is JSON text already (the coalescer measures items as it serializes them). */
  async requestJson<T>(method: string, path: string, bodyJson: string | undefined): Promise<T> {
    let res: RawResponse;
    const sent = { whole: false };
    try {
      res = await this.exchange(method, path, bodyJson, sent);
    } catch (err) {
      throw new KmsUnreachableError(this.baseUrl, err, sent.whole);
    }
    const { text } = res;
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (res.status < 200 || res.status > 299) {
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

  /** One request and its whole answer; rejects when there is none within timeoutMs or the connection fails. */
  private exchange(
    method: string,
    path: string,
    body: string | undefined,
    sent: { whole: boolean },
  ): Promise<RawResponse> {
    const { url, agent, send } = this.transport;
    const headers: Record<string, string | number> = {};
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(body);
    }
    if (this.token) headers.authorization = `Bearer ${typeof this.token === 'function' ? this.token() : this.token}`;
    return new Promise((resolve, reject) => {
      const req = send({
        agent,
        protocol: url.protocol,
        hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'), // an IPv6 literal without its URL brackets
        port: url.port,
        method,
        path: `${url.pathname.replace(/\/+$/, '')}${path}`,
        headers,
      });
      // One timer cleared on completion (not AbortSignal.timeout(), which fires for every request and builds a
      // DOMException each time: visible in the broker's profile after a 10,000-device storm).
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const fail = (err: Error) => {
        clearTimeout(timer);
        reject(err);
      };
      req.once('error', fail);
      // 'finish': the last byte of the request was handed to the connection.
      req.once('finish', () => (sent.whole = true));
      req.once('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('error', fail);
        res.once('aborted', () => fail(new Error('connection closed before the answer was complete')));
        res.once('end', () => {
          clearTimeout(timer);
          if (!res.complete) return reject(new Error('connection closed before the answer was complete'));
          resolve({
            status: res.statusCode ?? 0,
            statusText: res.statusMessage ?? '',
            text: Buffer.concat(chunks).toString('utf8'),
          });
        });
      });
      req.end(body);
    });
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
    const body = encKeysBody(number, sessionId);
    return this.request<KeyContainer>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/enc_keys`, body);
  }
  /** ETSI 014 dec_keys; `proofs[i]`, when given, is the proof of use of `keyIds[i]` (docs/KMS-API.md). */
  decKeys(saeId: string, keyIds: string[], sessionId?: string, proofs: ReadonlyArray<UplinkProof | undefined> = []) {
    const body = decKeysBody(keyIds, sessionId, proofs);
    return this.request<KeyContainer>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/dec_keys`, body);
  }
  retire(saeId: string, keyIds: string[]) {
    const body: RetireRequest = { key_IDs: keyIds.map((key_ID) => ({ key_ID })) };
    return this.request<{ retired: number }>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/retire`, body);
  }

  // --- bulk extension (docs/KMS-API.md): each item answered on its own ---
  bulkClaims(claims: BulkClaimItem[]) {
    return this.request<BulkClaimsJson>('POST', '/api/v1/bulk/claims', { claims });
  }
  bulkRetire(retirements: BulkRetireItem[]) {
    return this.request<BulkRetireJson>('POST', '/api/v1/bulk/retirements', { retirements });
  }
  /** Keys asked for whose answer was lost (docs/KMS-API.md "Abandoned claims"). */
  bulkAbandon(abandons: BulkAbandonItem[]) {
    return this.request<BulkRetireJson>('POST', '/api/v1/bulk/abandons', { abandons });
  }
  /** One abandon item, as a bulk request of one; its refusal is thrown as its KmsHttpError. */
  async abandon(item: BulkAbandonItem): Promise<{ retired: number }> {
    const [r] = (await this.bulkAbandon([item])).results;
    if (r?.error) throw new KmsHttpError(r.error.status, r.error.code, r.error.message, r.error.details);
    return { retired: r?.retired ?? 0 };
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
