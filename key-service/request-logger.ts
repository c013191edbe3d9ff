// Each request's logger, made a pino child (bound to the request id) only when the request logs something.
import type { FastifyBaseLogger, LogLevel } from 'fastify';
import type { Bindings, ChildLoggerOptions } from 'pino';

type Level = Exclude<LogLevel, 'silent'>;
type LogArgs = Parameters<FastifyBaseLogger['info']>;

/**
 * The logger fastify gives a request. Fastify makes a pino child per request, which cost more than any other step
 * of a claim's own logging (about 2.4% of the key service's busy time under bench:kms, profiled), though a request
 * at the default level logs nothing. This one makes that child on the first call at an enabled level, with the same
 * bindings, so what is written is unchanged.
 */
class LazyRequestLogger implements FastifyBaseLogger {
  private made: FastifyBaseLogger | undefined;

  constructor(
    private readonly parent: FastifyBaseLogger & { isLevelEnabled?(level: string): boolean },
    private readonly bindings: Bindings,
  ) {}

  private get real(): FastifyBaseLogger {
    return (this.made ??= this.parent.child(this.bindings));
  }

  private log(level: Level, args: LogArgs): void {
    if (this.made === undefined && this.parent.isLevelEnabled?.(level) === false) return;
    (this.real[level] as (...a: LogArgs) => void)(...args);
  }

  get level(): string {
    return this.made?.level ?? this.parent.level;
  }
  set level(level: string) {
    this.real.level = level;
  }

  fatal(...args: LogArgs): void {
    this.log('fatal', args);
  }
  error(...args: LogArgs): void {
    this.log('error', args);
  }
  warn(...args: LogArgs): void {
    this.log('warn', args);
  }
  info(...args: LogArgs): void {
    this.log('info', args);
  }
  debug(...args: LogArgs): void {
    this.log('debug', args);
  }
  trace(...args: LogArgs): void {
    this.log('trace', args);
  }
  /** pino's `silent` level method writes nothing. */
  silent(): void {}

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.real.child(bindings, options);
  }
}

/**
 * Fastify's childLoggerFactory: lazy unless the route asks for child options of its own (a route log level or
 * serializers), which only a real child applies.
 */
export function lazyRequestLogger(
  logger: FastifyBaseLogger,
  bindings: Bindings,
  options: ChildLoggerOptions,
): FastifyBaseLogger {
  if (Object.keys(options).length > 0) return logger.child(bindings, options);
  return new LazyRequestLogger(logger, bindings);
}
