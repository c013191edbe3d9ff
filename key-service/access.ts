// Who may call which route, by construction: every route belongs to one caller group, an encapsulated fastify
// plugin whose onRequest hook authenticates that group's callers before routing's result is used for anything.
// The group a route is registered in is its role; a route outside every group keeps the app from starting.
import type { JsonSchemaToTsProvider } from '@fastify/type-provider-json-schema-to-ts';
import type {
  FastifyBaseLogger,
  FastifyInstance,
  FastifyPluginAsync,
  FastifyRequest,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
  RouteOptions,
} from 'fastify';
import type { KmsContext } from './context.js';
import { authenticateAdmin, authenticateApp, authenticateBroker, authenticateConsole, type Caller } from './callers.js';

/**
 * The caller roles routes are grouped by. Devices call only public routes (login); apps also their sessions;
 * console = its pages.
 */
export const CALLER_ROLES = ['public', 'broker', 'admin', 'console', 'app'] as const;
export type CallerRole = (typeof CALLER_ROLES)[number];

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Set by the route's group; a route that declares another role than its group's is refused. */
    role?: CallerRole;
  }
  interface FastifyRequest {
    /** Who is calling, as the route group's hook established it (null only before that hook ran). */
    caller: Caller | null;
  }
}

/** A route group's scope: fastify with the JSON-schema type provider, so schemas type requests and replies. */
export type RouteScope = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  JsonSchemaToTsProvider
>;

const AUTHENTICATE: Record<CallerRole, ((ctx: KmsContext, req: FastifyRequest) => Caller) | null> = {
  public: null,
  broker: authenticateBroker,
  admin: authenticateAdmin,
  app: authenticateApp,
  console: authenticateConsole,
};

/**
 * Largest body each group's routes accept, where it is below the service's bodyLimit. Anyone may call the public
 * routes, whose bodies are a few hundred bytes: at the service-wide 1 MiB, 40 anonymous requests in parallel held
 * the event loop for seconds (parsing before the schema refuses them); past this limit fastify answers 413 unread.
 */
export const GROUP_BODY_LIMIT: Record<CallerRole, number | undefined> = {
  public: 4096,
  broker: undefined,
  admin: undefined,
  app: 4096,
  // Console forms: a search, a reason, an id and a CSRF token.
  console: 16 * 1024,
};

/** Route options each group has taken in; a route missing here was registered outside every group. */
const grouped = new WeakMap<RouteOptions, CallerRole>();

/** The plugin holding one caller group's routes, its credential check scoped to exactly those routes. */
export function callerGroup(
  role: CallerRole,
  ctx: KmsContext,
  routes: (scope: RouteScope) => void,
): FastifyPluginAsync {
  return async (scope) => {
    scope.addHook('onRoute', (route) => {
      const declared = route.config?.role;
      if (declared !== undefined && declared !== role)
        throw new Error(`route ${route.method} ${route.url} declares role '${declared}' inside the ${role} group`);
      route.config = { ...route.config, role };
      const limit = GROUP_BODY_LIMIT[role];
      // A route of an authenticated group may name a larger limit of its own (an application's end-to-end claim
      // carries an envelope as proof of use): its caller is authenticated before the body is read.
      const own = role !== 'public' && route.bodyLimit !== undefined;
      if (limit !== undefined && !own) route.bodyLimit = Math.min(route.bodyLimit ?? limit, limit);
      grouped.set(route, role);
    });
    const authenticate = AUTHENTICATE[role];
    // onRequest runs before the body is parsed or validated: an unauthenticated caller learns nothing else.
    if (authenticate) scope.addHook('onRequest', async (req) => void (req.caller = authenticate(ctx, req)));
    else scope.addHook('onRequest', async (req) => void (req.caller = { role: 'public' }));
    routes(scope.withTypeProvider<JsonSchemaToTsProvider>());
  };
}

/** Makes `app.ready()` (and so listen) fail while any route was registered outside a caller group. */
export function refuseUngroupedRoutes(app: FastifyInstance): void {
  const routes: RouteOptions[] = [];
  app.decorateRequest('caller', null);
  app.addHook('onRoute', (route) => void routes.push(route));
  app.addHook('onReady', async () => {
    const ungrouped = routes.filter((r) => grouped.get(r) === undefined || grouped.get(r) !== r.config?.role);
    if (ungrouped.length > 0) {
      const list = ungrouped.map((r) => `${String(r.method)} ${r.url}`).join(', ');
      throw new Error(`routes without a caller role (register them in a caller group): ${list}`);
    }
  });
}
