// Review of ea17abc: what the hold made at CONNECT costs a plain application per delivery (npm run build first;
// node test/review/plain-app-cost.mjs). Not a vitest file.
import { AppDeliveryHold, keyNeedOf } from '../../dist/broker/hooks/app-hold.js';
import { DEFAULT_TOPICS } from '../../dist/broker/topic-policy.js';
import { EventEmitter } from 'node:events';
import { Buffer } from 'node:buffer';
const principal = { role: 'app', id: 'dash', subscribe: ['devices/+/up/#', 'fleet/+/status', 'alerts/#'], publish: [] };
const state = { principal };
const ctx = { topics: DEFAULT_TOPICS, policy: { current: { size: 0 } } };
const N = 2_000_000;
const pkt = { topic: 'devices/d1234/up/telemetry', payload: Buffer.alloc(64), qos: 0 };
const sink = { n: 0 };
const direct = (_p, _cb) => {
  sink.n++;
};
function run(name, f) {
  for (let i = 0; i < 200000; i++) f(pkt, direct);
  const t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) f(pkt, direct);
  const ns = Number(process.hrtime.bigint() - t) / N;
  console.log(name, ns.toFixed(1), 'ns/delivery', sink.n > 0 ? '' : '(nothing delivered)');
}
run('direct', direct);
const c = new EventEmitter();
c.deliver0 = direct;
c.deliverQoS = direct;
const hold = new AppDeliveryHold(
  (p, ahead) => keyNeedOf(ctx, state, false, p.topic, p.payload, ahead),
  { ms: 1000, count: 10, bytes: 1e9 },
  { end() {}, dropped() {} },
  false,
);
hold.gate(c);
c.emit('connected');
run('gated deliver0 (clean plain app)', c.deliver0);
// QoS 0 on a QoS 1 subscription: Aedes' deliverQoS calls the gated deliver0
const c2 = new EventEmitter();
c2.deliver0 = direct;
c2.deliverQoS = function (p, cb) {
  return p.qos === 0 ? c2.deliver0(p, cb) : direct(p, cb);
};
const hold2 = new AppDeliveryHold(
  (p, ahead) => keyNeedOf(ctx, state, false, p.topic, p.payload, ahead),
  { ms: 1000, count: 10, bytes: 1e9 },
  { end() {}, dropped() {} },
  false,
);
hold2.gate(c2);
c2.emit('connected');
run('gated deliverQoS, QoS 0 message (two passes)', c2.deliverQoS);
