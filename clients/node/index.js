// @vra/gateway-client — the Node.js SDK of vra-gateway. See README.md.
export {
  GatewayClient,
  DEFAULT_TARGET,
  DEFAULT_TIMEOUT_MS,
  PROTO_ROOT,
  PROTO_FILE,
} from './src/client.js';
export {
  GatewayError,
  InvalidArgument,
  Unauthenticated,
  ResourceExhausted,
  BudgetExhausted,
  Overloaded,
  Unavailable,
  DeadlineExceeded,
  NotCached,
  OutlineError,
  fromGrpcError,
} from './src/errors.js';
export { Phase, SectionType, Tier, FallbackReason, CacheMode, CacheStatus, PHASES } from './src/types.js';
export {
  ReportCompiler,
  loadOutline,
  normaliseOutline,
  renderTemplate,
  defaultReportId,
  DEFAULT_TEMPLATES,
  ABSTRACT_SECTION_ID,
} from './src/compiler.js';
