// Service configuration from one JSON Schema per service: built-in defaults (the schema's `default`s), then a JSON
// file, then environment variables (a property's `env`), then flags; the merged result is validated with ajv, and
// each refusal names the key, where its value came from and what is allowed.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';

/** What a config schema may say about a property besides JSON Schema: the environment variable that sets it. */
export interface ConfigSchema {
  type?: string | readonly string[];
  properties?: Readonly<Record<string, ConfigSchema>>;
  items?: ConfigSchema;
  enum?: readonly unknown[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  maxItems?: number;
  default?: unknown;
  env?: string;
  /** The value is a path to a file that must be readable at start (PEM certificates and keys). */
  file?: boolean;
  writeOnly?: boolean;
  description?: string;
  [keyword: string]: unknown;
}

export type ConfigErrorCode =
  'CONFIG_ERR_INVALID' | 'CONFIG_ERR_UNREADABLE' | 'CONFIG_ERR_NOT_JSON' | 'CONFIG_ERR_TOO_LARGE';

/** A configuration refused at start; the message names every offending key (one per line). */
export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(
    readonly code: ConfigErrorCode,
    detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

/** Config files are small; anything bigger (or endless, like /dev/zero) is refused before parsing. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, strictTypes: false });
ajv.addKeyword({ keyword: 'env', schemaType: 'string' });
ajv.addKeyword({ keyword: 'file', schemaType: 'boolean' });

type Layer = { label: (path: string[]) => string; values: Record<string, unknown> };
type Path = string[];

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function setOwn(target: Record<string, unknown>, key: string, value: unknown): void {
  // defineProperty, so a "__proto__" key from a file stays an ordinary (and then refused) key.
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Reads a config file: a regular file of at most MAX_CONFIG_FILE_BYTES holding one JSON object. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new ConfigError('CONFIG_ERR_UNREADABLE', `config file ${path} is not a regular file`);
    const buf = Buffer.alloc(MAX_CONFIG_FILE_BYTES + 1);
    let n = 0;
    for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0;) n += r;
    if (n > MAX_CONFIG_FILE_BYTES)
      throw new ConfigError(
        'CONFIG_ERR_TOO_LARGE',
        `config file ${path} is larger than ${MAX_CONFIG_FILE_BYTES} bytes`,
      );
    text = buf.subarray(0, n).toString('utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError('CONFIG_ERR_UNREADABLE', `cannot read config file ${path}: ${(err as Error).message}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError('CONFIG_ERR_NOT_JSON', `config file ${path} is not JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(parsed))
    throw new ConfigError('CONFIG_ERR_INVALID', `config file ${path} must hold a JSON object ({...}) at the top`);
  return parsed;
}

/** Environment variables named by `env` in the schema, at their properties' paths, with their names. */
function envLayer(schema: ConfigSchema, env: NodeJS.ProcessEnv): Layer {
  const values: Record<string, unknown> = {};
  const names = new Map<string, string>();
  const walk = (s: ConfigSchema, path: Path) => {
    for (const [key, sub] of Object.entries(s.properties ?? {})) {
      const p = [...path, key];
      const raw = sub.env ? env[sub.env] : undefined;
      if (sub.env && raw !== undefined && raw !== '') {
        let node = values;
        for (const k of p.slice(0, -1)) node = (node[k] ??= {}) as Record<string, unknown>;
        node[key] = fromString(sub, raw);
        names.set(p.join('.'), sub.env);
      }
      walk(sub, p);
    }
  };
  walk(schema, []);
  return {
    values,
    label: (path) => {
      for (let i = path.length; i > 0; i--) {
        const name = names.get(path.slice(0, i).join('.'));
        if (name) return `environment variable ${name}`;
      }
      return 'the environment';
    },
  };
}

/** A string from the environment or a flag as the type the schema wants, when it reads as one; else unchanged. */
export function fromString(schema: ConfigSchema, raw: string): unknown {
  const types = [schema.type ?? []].flat();
  if ((types.includes('integer') || types.includes('number')) && /^-?\d+(\.\d+)?$/.test(raw)) return Number(raw);
  if (types.includes('boolean') && (raw === 'true' || raw === 'false')) return raw === 'true';
  if (types.includes('null') && raw === 'off') return null;
  return raw;
}

/** Merges `layer` into `target` where the schema has nested objects; elsewhere the layer's value replaces. */
function mergeInto(target: Record<string, unknown>, layer: Record<string, unknown>, schema: ConfigSchema): void {
  for (const [key, value] of Object.entries(layer)) {
    if (value === undefined) continue;
    const sub = schema.properties?.[key];
    const current = target[key];
    if (sub?.properties && isPlainObject(value) && isPlainObject(current)) {
      const copy: Record<string, unknown> = {};
      mergeInto(copy, current, sub);
      mergeInto(copy, value, sub);
      setOwn(target, key, copy);
    } else {
      setOwn(target, key, isPlainObject(value) && sub?.properties ? cloneShallowTree(value, sub) : value);
    }
  }
}

function cloneShallowTree(value: Record<string, unknown>, schema: ConfigSchema): Record<string, unknown> {
  const copy: Record<string, unknown> = {};
  mergeInto(copy, value, schema);
  return copy;
}

function valueAt(root: unknown, path: Path): { found: boolean; value: unknown } {
  let node = root;
  for (const k of path) {
    if (!isPlainObject(node) || !Object.prototype.hasOwnProperty.call(node, k))
      return { found: false, value: undefined };
    node = node[k];
  }
  return { found: true, value: node };
}

function schemaAt(schema: ConfigSchema, path: Path): ConfigSchema | undefined {
  let s: ConfigSchema | undefined = schema;
  for (const k of path) s = s?.properties?.[k] ?? (s?.items && /^\d+$/.test(k) ? s.items : undefined);
  return s;
}

/** What a schema allows, in words. */
export function describeAllowed(s: ConfigSchema): string {
  if (s.enum) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  const types = [s.type ?? []].flat().filter((t) => t !== 'null');
  const nullable = [s.type ?? []].flat().includes('null') ? 'null (off) or ' : '';
  const t = types[0];
  let what: string;
  if (t === 'integer' || t === 'number') {
    const noun = t === 'integer' ? 'an integer' : 'a number';
    const lo = s.minimum ?? (s.exclusiveMinimum !== undefined ? `more than ${s.exclusiveMinimum}` : undefined);
    what =
      s.minimum !== undefined && s.maximum !== undefined
        ? `${noun} from ${s.minimum} to ${s.maximum}`
        : lo !== undefined
          ? `${noun} ${typeof lo === 'number' ? `of at least ${lo}` : lo}`
          : noun;
  } else if (t === 'string') {
    what = s.pattern
      ? `a string matching ${s.pattern}`
      : s.minLength
        ? `a non-empty string${s.maxLength ? ` of at most ${s.maxLength} characters` : ''}`
        : 'a string';
  } else if (t === 'boolean') what = 'true or false';
  else if (t === 'array') {
    const most = s.maxItems !== undefined ? `at most ${s.maxItems} ` : '';
    what = `a list of ${most}entries${s.items ? `, each ${describeAllowed(s.items)}` : ''}`;
  } else if (t === 'object') what = `an object with the keys ${Object.keys(s.properties ?? {}).join(', ')}`;
  else what = 'a value';
  return `${nullable}${what}`;
}

/** The known key closest to a mistyped one, if it is close (at most 2 edits). */
function closest(word: string, known: string[]): string | undefined {
  const distance = (a: string, b: string) => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0]![j] = j;
    for (let i = 1; i <= a.length; i++)
      for (let j = 1; j <= b.length; j++)
        d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    return d[a.length]![b.length]!;
  };
  if (word.length > 64) return undefined;
  const best = known
    .map((k) => [k, distance(word.toLowerCase(), k.toLowerCase())] as const)
    .sort((x, y) => x[1] - y[1])[0];
  return best && best[1] <= 2 ? best[0] : undefined;
}

function explain(
  err: ErrorObject,
  schema: ConfigSchema,
  merged: unknown,
  layers: Layer[],
): { path: string; text: string } {
  const base = err.instancePath
    .split('/')
    .slice(1)
    .map((k) => k.replace(/~1/g, '/').replace(/~0/g, '~'));
  const origin = (path: Path) => {
    for (const l of layers) {
      for (let i = path.length; i > 0; i--) if (valueAt(l.values, path.slice(0, i)).found) return l.label(path);
    }
    return 'the built-in defaults';
  };
  if (err.keyword === 'additionalProperties') {
    const key = (err.params as { additionalProperty: string }).additionalProperty;
    const path = [...base, key];
    const known = Object.keys(schemaAt(schema, base)?.properties ?? {});
    const guess = closest(key, known);
    return {
      path: path.join('.'),
      text: `${JSON.stringify(path.join('.'))} (from ${origin(path)}) is not a known key${guess ? `; did you mean ${JSON.stringify([...base, guess].join('.'))}?` : '.'} Known keys${base.length ? ` of ${base.join('.')}` : ''}: ${known.join(', ')}`,
    };
  }
  if (err.keyword === 'required') {
    const path = [...base, (err.params as { missingProperty: string }).missingProperty];
    const s = schemaAt(schema, path);
    return {
      path: path.join('.'),
      text: `${JSON.stringify(path.join('.'))} is missing (${base.join('.')} from ${origin(base)}); expected ${s ? describeAllowed(s) : 'a value'}`,
    };
  }
  const s = schemaAt(schema, base) ?? {};
  const { value } = valueAt(merged, base);
  const shown =
    !s.writeOnly && (typeof value === 'number' || typeof value === 'boolean' || value === null)
      ? ` = ${JSON.stringify(value)}`
      : !s.writeOnly && typeof value === 'string' && value.length <= 64 && !/[\n\r]/.test(value)
        ? ` = ${JSON.stringify(value)}`
        : '';
  return {
    path: base.join('.'),
    text: `${JSON.stringify(base.join('.') || '(top level)')}${shown} (from ${origin(base)}) is not allowed: expected ${describeAllowed(s)}`,
  };
}

export interface LoadOptions {
  /** A JSON config file (already chosen by the caller: flag or environment). */
  file?: string | undefined;
  env: NodeJS.ProcessEnv;
  /** Flags and programmatic overrides, highest priority. */
  overrides: Record<string, unknown>;
  /** Checks across keys after the schema passed: messages for what is wrong, empty if nothing. */
  refine?: (config: never) => string[];
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const child of Object.values(v)) deepFreeze(child);
    Object.freeze(v);
  }
  return v;
}

/** Defaults < file < environment < overrides, validated against `schema`; the result is deep-frozen. */
export function loadConfig<T>(schema: ConfigSchema, options: LoadOptions): Readonly<T> {
  const validate = ajv.getSchema(schemaKey(schema)) ?? compile(schema);
  const layers: Layer[] = [{ values: options.overrides, label: () => 'a command-line flag (or the caller)' }];
  layers.push(envLayer(schema, options.env));
  if (options.file) {
    const file = options.file;
    layers.push({ values: readConfigFile(file), label: () => `config file ${file}` });
  }
  const merged: Record<string, unknown> = {};
  for (const layer of [...layers].reverse()) mergeInto(merged, layer.values, schema);
  if (!validate(merged)) {
    const seen = new Set<string>();
    const lines: string[] = [];
    for (const err of validate.errors ?? []) {
      const { path, text } = explain(err, schema, merged, layers);
      if (seen.has(path)) continue;
      seen.add(path);
      lines.push(text);
    }
    throw new ConfigError('CONFIG_ERR_INVALID', lines.join('\n  '));
  }
  const problems = [...unreadableFiles(schema, merged, []), ...(options.refine?.(merged as never) ?? [])];
  if (problems.length) throw new ConfigError('CONFIG_ERR_INVALID', problems.join('\n  '));
  return deepFreeze(merged as T);
}

/** The config a schema describes when nothing is set (its defaults). */
export function configDefaults<T>(schema: ConfigSchema): Readonly<T> {
  return loadConfig<T>(schema, { env: {}, overrides: {} });
}

const compiled = new WeakMap<ConfigSchema, string>();
let next = 0;
function schemaKey(schema: ConfigSchema): string {
  let key = compiled.get(schema);
  if (!key) compiled.set(schema, (key = `config-${next++}`));
  return key;
}
function compile(schema: ConfigSchema) {
  ajv.addSchema(schema as object, schemaKey(schema));
  return ajv.getSchema(schemaKey(schema))!;
}

/** Refusals for values of `file: true` properties that name files this process cannot read, by key. */
function unreadableFiles(schema: ConfigSchema, value: unknown, path: Path): string[] {
  if (schema.file && typeof value === 'string') {
    try {
      closeSync(openSync(value, 'r'));
      return [];
    } catch (err) {
      const key = JSON.stringify(path.join('.'));
      return [`${key} = ${JSON.stringify(value)}: cannot read that file (${(err as NodeJS.ErrnoException).code})`];
    }
  }
  if (!isPlainObject(value)) return [];
  return Object.entries(schema.properties ?? {}).flatMap(([k, sub]) => unreadableFiles(sub, value[k], [...path, k]));
}
