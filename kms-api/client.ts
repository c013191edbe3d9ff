// Typed HTTP client for the key service (admin CLI, filling machine, broker, simulator, tests), on Node's built-in fetch.

export interface DeliveredKeyJson {
  key_ID: string;
  key: string;
  key_ID_extension?: { qkey_key_index?: number };
}

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
      const e = (json ?? {}) as { code?: string; message?: string; details?: unknown[] };
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
    return this.request<{ challenge: string; expires_in: number }>('POST', '/api/v1/auth/challenge', {
      device_id: deviceId,
    });
  }
  deviceToken(deviceId: string, challenge: string, mac: string) {
    return this.request<TokenResponse>('POST', '/api/v1/auth/token', {
      grant_type: 'device_challenge',
      device_id: deviceId,
      challenge,
      mac,
    });
  }
  clientToken(clientId: string, clientSecret: string) {
    return this.request<TokenResponse>('POST', '/api/v1/auth/token', {
      grant_type: 'client_credentials',
      client_id: clientId,
      client_secret: clientSecret,
    });
  }
  tokenKeys() {
    return this.request<{ keys: Array<{ kid: string; alg: string; public_key: string }> }>('GET', '/api/v1/auth/keys');
  }
  revocations(after: number) {
    return this.request<{ cursor: number; revocations: Array<{ subject: string; role: string; revoked_at: number }> }>(
      'GET',
      `/api/v1/revocations?after=${after}`,
    );
  }

  // --- ETSI GS QKD 014 ---
  status(saeId: string) {
    return this.request<KeyStatusJson>('GET', `/api/v1/keys/${encodeURIComponent(saeId)}/status`);
  }
  encKeys(saeId: string, number: number, sessionId?: string) {
    return this.request<{ keys: DeliveredKeyJson[] }>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/enc_keys`, {
      number,
      size: 128,
      ...(sessionId ? { extension_mandatory: [{ qkey_session_id: sessionId }] } : {}),
    });
  }
  decKeys(saeId: string, keyIds: string[], sessionId?: string) {
    return this.request<{ keys: DeliveredKeyJson[] }>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/dec_keys`, {
      key_IDs: keyIds.map((key_ID) => ({ key_ID })),
      ...(sessionId ? { key_IDs_extension: { qkey_session_id: sessionId } } : {}),
    });
  }
  retire(saeId: string, keyIds: string[]) {
    return this.request<{ retired: number }>('POST', `/api/v1/keys/${encodeURIComponent(saeId)}/retire`, {
      key_IDs: keyIds.map((key_ID) => ({ key_ID })),
    });
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
    return this.request<{ devices: DeviceJson[]; next?: string }>('GET', `/api/v1/admin/devices?${q}`);
  }
  device(deviceId: string) {
    return this.request<DeviceJson>('GET', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}`);
  }
  revokeDevice(deviceId: string, reason?: string) {
    return this.request<{ device_id: string; state: string; destroyed_keys: number }>(
      'POST',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/revoke`,
      reason ? { reason } : {},
    );
  }
  deviceKeys(deviceId: string) {
    return this.request<{ keys: KeyStateJson[] }>('GET', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/keys`);
  }
  registerBatch(
    deviceId: string,
    batch: {
      batch_id: string;
      login_key?: string;
      keys: Array<{ key_index: number; direction: 'up' | 'down'; key: string }>;
    },
  ) {
    return this.request<BatchJson>('POST', `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches`, batch);
  }
  batch(deviceId: string, batchId: string) {
    return this.request<BatchJson>(
      'GET',
      `/api/v1/admin/devices/${encodeURIComponent(deviceId)}/batches/${encodeURIComponent(batchId)}`,
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
  registerApp(appId: string, acl?: { publish?: string[]; subscribe?: string[] }) {
    return this.request<{ app_id: string; client_secret: string }>('POST', '/api/v1/admin/apps', {
      app_id: appId,
      ...acl,
    });
  }
  registerBroker(brokerId: string) {
    return this.request<{ broker_id: string; client_secret: string }>('POST', '/api/v1/admin/brokers', {
      broker_id: brokerId,
    });
  }
  listClients(role: 'app' | 'broker') {
    return this.request<Record<string, ClientJson[]>>('GET', `/api/v1/admin/${role}s`).then((r) => r[`${role}s`] ?? []);
  }
  revokeClient(role: 'app' | 'broker', id: string) {
    return this.request<Record<string, string>>('POST', `/api/v1/admin/${role}s/${encodeURIComponent(id)}/revoke`);
  }
  pools(lowOnly = false) {
    return this.request<{
      low_water: number;
      pools: Array<{ device_id: string; up: number; down: number; low: boolean }>;
    }>('GET', `/api/v1/admin/pools${lowOnly ? '?low_only=true' : ''}`);
  }
  audit(query: { after?: number; limit?: number; device_id?: string; action?: string } = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    return this.request<{ entries: AuditJson[]; next?: number }>('GET', `/api/v1/admin/audit?${q}`);
  }
}

/** ETSI GS QKD 014 status, with this key service's extension fields. */
export interface KeyStatusJson {
  source_KME_ID: string;
  target_KME_ID: string;
  master_SAE_ID: string;
  slave_SAE_ID: string;
  key_size: number;
  stored_key_count: number;
  max_key_count: number;
  max_key_per_request: number;
  max_key_size: number;
  min_key_size: number;
  max_SAE_ID_count: number;
  status_extension?: {
    qkey_uplink_available?: number;
    qkey_downlink_available?: number;
    qkey_low?: boolean;
    qkey_next_uplink_key_index?: number | null;
  };
}

export interface TokenResponse {
  access_token: string;
  token_type: 'Bearer';
  expires_in: number;
}
export interface DeviceJson {
  device_id: string;
  serial: string | null;
  state: 'active' | 'revoked';
  created_at: number;
  revoked_at: number | null;
  revoke_reason: string | null;
  has_login_key: boolean;
  pool: { up: number; down: number };
  next_key_index: number;
  low: boolean;
}
export interface BatchJson {
  batch_id: string;
  device_id: string;
  state: 'pending' | 'committed' | 'cancelled';
  up_count: number;
  down_count: number;
  has_login_key: boolean;
  created_at: number;
  settled_at: number | null;
}
export interface KeyStateJson {
  key_ID: string;
  key_index: number;
  direction: 'up' | 'down';
  state: string;
  batch_id: string;
  claimed_by: string | null;
  claimed_session: string | null;
  claimed_at: number | null;
  retired_at: number | null;
  destroyed_at: number | null;
}
export interface ClientJson {
  client_id: string;
  role: string;
  state: string;
  created_at: number;
  revoked_at: number | null;
  acl?: { publish: string[]; subscribe: string[] };
}
export interface AuditJson {
  id: number;
  at: number;
  actor: string;
  action: string;
  device_id: string | null;
  detail: Record<string, unknown> | null;
}
