#!/usr/bin/env node
// Socket.IO + @socket.io/redis-adapter baseline for `switchyard bench --targets N`.
//
// One process hosts N+1 Socket.IO servers ("gateways") on 127.0.0.1, each with
// its own redis adapter (own pub and sub node-redis clients): either the
// classic createAdapter(pub, sub) (PUBLISH to one channel per room, every node
// PSUBSCRIBEs socket.io#/#*, so every message reaches every node) or, with
// --adapter sharded, createShardedAdapter(pub, sub, { subscriptionMode:
// 'dynamic' }) (Redis 7 SPUBLISH; each node SSUBSCRIBEs one channel per room it
// holds, so a message reaches only the node that has the target's room). Gateway 0 is the
// sender's node; gateways 1..N each hold one socket.io-client (websocket only)
// whose socket joins room `user:<i>`. Message k goes, from gateway 0's server,
// to room `user:<1 + k % N>`: 1:1 messages round robin over N target gateways.
// Closed loop in batches of 100: emit a batch, then yield to the event loop
// (setImmediate), or, when the next batch would take the messages in flight
// (sent, not yet received) over --inflight (200 = two batches), wait instead
// until the receivers have caught up enough for it. Every delivery is counted by id at the receivers (delivered, lost, duplicated,
// misrouted) and timed (receive - send, same process, performance.now()).
//
// Usage: node bench.js [--adapter classic|sharded] [--targets N] [--duration S]
//                      [--size B] [--redis URL] [--batch 100] [--inflight 200] [--drain S]
'use strict';

const http = require('node:http');
const os = require('node:os');
const { performance } = require('node:perf_hooks');
const { setImmediate: yieldImmediate } = require('node:timers/promises');
const { Server } = require('socket.io');
const { io: ioClient } = require('socket.io-client');
const { createAdapter, createShardedAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

// ---------- arguments ----------
function parseArgs(argv) {
  const opts = {
    adapter: 'classic',
    targets: 1,
    duration: 5,
    size: 256,
    redis: 'redis://127.0.0.1:6379',
    batch: 100,
    inflight: 200,
    drain: 10,
  };
  const numeric = { targets: [1, 1000, true], duration: [0.1, 3600, false], size: [64, 1 << 20, true],
    batch: [1, 100000, true], inflight: [1, 10000000, true], drain: [0, 600, false] };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    if (!a.startsWith('--')) usage(`unexpected argument '${a}'`);
    a = a.slice(2);
    const eq = a.indexOf('=');
    if (eq >= 0) { v = a.slice(eq + 1); a = a.slice(0, eq); } else { v = argv[++i]; }
    if (a === 'help') usage();
    if (!(a in opts)) usage(`unknown flag --${a}`);
    if (v === undefined) usage(`--${a} needs a value`);
    if (a in numeric) {
      const [lo, hi, int] = numeric[a];
      const s = a === 'duration' || a === 'drain' ? v.replace(/s$/, '') : v;
      const n = Number(s);
      if (!Number.isFinite(n) || n < lo || n > hi || (int && !Number.isInteger(n))) {
        usage(`--${a} takes ${int ? 'an integer' : 'a number'} from ${lo} to ${hi}, got '${v}'`);
      }
      opts[a] = n;
    } else {
      opts[a] = v;
    }
  }
  if (opts.inflight < opts.batch) usage('--inflight must be at least --batch');
  if (opts.adapter !== 'classic' && opts.adapter !== 'sharded') {
    usage(`--adapter takes 'classic' or 'sharded', got '${opts.adapter}'`);
  }
  return opts;
}

function usage(err) {
  const text = 'usage: node bench.js [--adapter classic|sharded (classic)] [--targets N (1)] [--duration S (5)]\n' +
    '                     [--size BYTES (256)] [--redis URL (redis://127.0.0.1:6379)] [--batch 100]\n' +
    '                     [--inflight 200] [--drain S (10)]';
  if (err) { console.error(`bench.js: ${err}\n${text}`); process.exit(2); }
  console.log(text); process.exit(0);
}

// ---------- growable typed arrays ----------
class Grow {
  constructor(Type, n = 1 << 16) { this.Type = Type; this.a = new Type(n); this.len = 0; }
  ensure(n) {
    if (n <= this.a.length) return;
    let m = this.a.length;
    while (m < n) m *= 2;
    const b = new this.Type(m); b.set(this.a); this.a = b;
  }
  push(x) { this.ensure(this.len + 1); this.a[this.len++] = x; }
}

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

const round = (x, d) => (Number.isFinite(x) ? Number(x.toFixed(d)) : null);

// Redis's own CPU seconds and bytes written to its clients (INFO), to show
// what the Pub/Sub fan-out costs Redis (it is another process).
async function redisStats(client) {
  const info = await client.info('cpu') + (await client.info('stats'));
  const get = (k) => Number((info.match(new RegExp(`^${k}:([0-9.]+)`, 'm')) || [])[1]);
  return { cpu: get('used_cpu_user') + get('used_cpu_sys'), out: get('total_net_output_bytes') };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const N = opts.targets;

  // ---------- state counted at the receivers ----------
  const seen = new Grow(Uint8Array, 1 << 20); // deliveries per message id
  const lat = new Grow(Float64Array, 1 << 20); // ms, one per delivery
  let deliveredUnique = 0; // distinct ids received (in-flight = sent - this)
  let deliveries = 0;      // every delivery, duplicates included
  let duplicates = 0;
  let misrouted = 0;       // delivered to a gateway the id was not meant for
  let lastDelivery = 0;
  let waiter = null;       // flow control: resolved when in-flight drops
  let waitBelow = 0;
  const warm = new Uint8Array(N + 1);
  let warmCount = 0;
  let warmWaiter = null;
  let sent = 0;

  function onMessage(gw, msg) {
    const now = performance.now();
    // payload: "<id>:<sendtime ms>:" + padding
    const c1 = msg.indexOf(':');
    const c2 = msg.indexOf(':', c1 + 1);
    const id = Number(msg.slice(0, c1));
    const t = Number(msg.slice(c1 + 1, c2));
    deliveries++;
    if (1 + (id % N) !== gw) misrouted++;
    seen.ensure(id + 1);
    if (seen.a[id]++ === 0) deliveredUnique++; else duplicates++;
    lat.push(now - t);
    lastDelivery = now;
    if (waiter && sent - deliveredUnique < waitBelow) { const w = waiter; waiter = null; w(); }
  }

  function onWarm(gw) {
    if (!warm[gw]) {
      warm[gw] = 1; warmCount++;
      if (warmCount === N && warmWaiter) warmWaiter();
    }
  }

  // ---------- set up gateways ----------
  const redisClients = [];
  const gateways = []; // { io, http, port }
  const clients = [];
  let shuttingDown = false;
  const onRedisError = (e) => { console.error(`bench.js: redis client error: ${e.message}`); };

  const admin = createClient({ url: opts.redis });
  admin.on('error', onRedisError);
  await admin.connect();
  const redisVersion = ((await admin.info('server')).match(/^redis_version:(\S+)/m) || [])[1];
  if (opts.adapter === 'sharded' && !(Number((redisVersion || '0').split('.')[0]) >= 7)) {
    // the sharded adapter issues SSUBSCRIBE without awaiting it: fail here, not
    // with an unhandled rejection later
    console.error(`bench.js: --adapter sharded needs Redis 7.0 or later (SPUBLISH/SSUBSCRIBE), found ${redisVersion}`);
    await admin.quit().catch(() => {});
    process.exit(2);
  }
  // classic: one pattern subscription per node, every message to every node.
  // sharded/dynamic: one SSUBSCRIBE per room a node holds (here user:<g> on
  // gateway g only) plus two per-namespace channels; a single-room emit without
  // ack SPUBLISHes to socket.io#/#<room># only.
  const makeAdapter = opts.adapter === 'sharded'
    ? (pub, sub) => createShardedAdapter(pub, sub, { subscriptionMode: 'dynamic' })
    : (pub, sub) => createAdapter(pub, sub);

  for (let g = 0; g <= N; g++) {
    const pub = createClient({ url: opts.redis });
    const sub = pub.duplicate();
    pub.on('error', onRedisError); sub.on('error', onRedisError);
    await Promise.all([pub.connect(), sub.connect()]);
    redisClients.push(pub, sub);
    const httpServer = http.createServer();
    const io = new Server(httpServer, { adapter: makeAdapter(pub, sub), serveClient: false });
    if (g > 0) {
      io.on('connection', (socket) => {
        socket.join(`user:${g}`);
        socket.emit('joined');
      });
    }
    await new Promise((res, rej) => { httpServer.once('error', rej); httpServer.listen(0, '127.0.0.1', res); });
    gateways.push({ io, httpServer, port: httpServer.address().port, pub });
  }

  // one receiving client per target gateway
  await Promise.all(gateways.slice(1).map((gwy, idx) => new Promise((res, rej) => {
    const gw = idx + 1;
    const c = ioClient(`http://127.0.0.1:${gwy.port}`, { transports: ['websocket'], forceNew: true, reconnection: false });
    clients.push(c);
    c.on('m', (msg) => onMessage(gw, msg));
    c.on('w', () => onWarm(gw));
    c.once('joined', res);
    c.once('connect_error', rej);
    c.on('disconnect', (reason) => {
      if (!shuttingDown) console.error(`bench.js: receiver ${gw} disconnected: ${reason}`);
    });
  })));
  const sender = gateways[0].io;
  const senderPub = gateways[0].pub;

  // ---------- warm up: each receiver gets one message before the clock ----------
  // The adapters' PSUBSCRIBEs (classic) or the per-room SSUBSCRIBEs issued on
  // join (sharded) are not awaited, so resend to
  // the receivers that have not had theirs yet until every one has (max 15 s).
  {
    const deadline = performance.now() + 15000;
    const allWarm = new Promise((res) => { warmWaiter = res; });
    while (warmCount < N) {
      for (let g = 1; g <= N; g++) if (!warm[g]) sender.to(`user:${g}`).emit('w', 'warm');
      await Promise.race([allWarm, new Promise((r) => setTimeout(r, 200))]);
      if (performance.now() > deadline) {
        console.error(`bench.js: warm-up: only ${warmCount} of ${N} receivers answered within 15 s`);
        process.exitCode = 1;
        break;
      }
    }
    warmWaiter = null;
  }

  // ---------- measured run ----------
  const size = opts.size;
  const pad = 'x'.repeat(size);
  const makePayload = (k, t) => {
    const head = `${k}:${t.toFixed(4)}:`;
    return head.length >= size ? head : head + pad.slice(0, size - head.length);
  };

  const cpu0 = process.cpuUsage();
  const redis0 = await redisStats(admin);
  const load0 = os.loadavg()[0];
  const t0 = performance.now();
  const tEnd = t0 + opts.duration * 1000;
  let flowWaits = 0;
  let stalled = false;
  let maxInFlight = 0;

  if (process.exitCode !== 1) {
    while (performance.now() < tEnd) {
      for (let j = 0; j < opts.batch; j++) {
        const k = sent;
        sender.to(`user:${1 + (k % N)}`).emit('m', makePayload(k, performance.now()));
        sent++;
      }
      const inflight = sent - deliveredUnique;
      if (inflight > maxInFlight) maxInFlight = inflight;
      if (inflight + opts.batch > opts.inflight) {
        // flow control: wait until the receivers are back under the cap
        // (room for one more batch); give up after 10 s without progress.
        flowWaits++;
        waitBelow = opts.inflight - opts.batch + 1;
        for (;;) {
          const before = deliveredUnique;
          const p = new Promise((res) => { waiter = res; });
          let to;
          const timedOut = await Promise.race([p.then(() => false),
            new Promise((r) => { to = setTimeout(() => r(true), 10000); })]);
          clearTimeout(to);
          if (!timedOut) break;
          if (deliveredUnique === before) { stalled = true; waiter = null; break; }
        }
        if (stalled) { console.error('bench.js: no delivery for 10 s with the in-flight cap reached; stopping'); break; }
      } else {
        await yieldImmediate();
      }
    }
  }
  const tSendEnd = performance.now();

  // make sure every publish has reached Redis (node-redis keeps order per
  // connection, so the PING's reply comes after every earlier PUBLISH's or
  // SPUBLISH's)
  await senderPub.ping();

  // ---------- stragglers ----------
  const drainDeadline = performance.now() + opts.drain * 1000;
  while (deliveredUnique < sent && performance.now() < drainDeadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const cpu = process.cpuUsage(cpu0);
  const redis1 = await redisStats(admin);
  const redisCpuS = redis1.cpu - redis0.cpu;
  const load = os.loadavg()[0];

  // ---------- results ----------
  let lost = 0;
  for (let k = 0; k < sent; k++) if (seen.a.length <= k || seen.a[k] === 0) lost++;
  const sorted = lat.a.subarray(0, lat.len).slice().sort();
  const elapsed = ((lastDelivery > t0 ? lastDelivery : tSendEnd) - t0) / 1000;
  const delivered = deliveredUnique;
  const result = {
    adapter: opts.adapter,
    targets: N,
    sent,
    delivered,
    lost,
    duplicates,
    msgs_per_s: round(delivered / elapsed, 0),
    p50_ms: round(percentile(sorted, 0.5), 3),
    p99_ms: round(percentile(sorted, 0.99), 3),
    cpu_user_s: round(cpu.user / 1e6, 3),
    cpu_sys_s: round(cpu.system / 1e6, 3),
    load_average: round(load, 2),
    // extras (not in switchyard's JSON)
    misrouted,
    max_ms: round(sorted.length ? sorted[sorted.length - 1] : NaN, 3),
    elapsed_s: round(elapsed, 3),
    send_s: round((tSendEnd - t0) / 1000, 3),
    cpu_us_per_msg: round(((cpu.user + cpu.system) / delivered), 2),
    redis_cpu_s: round(redisCpuS, 3),
    redis_out_bytes_per_msg: round((redis1.out - redis0.out) / Math.max(1, sent), 0),
    load_average_start: round(load0, 2),
    size,
    batch: opts.batch,
    inflight_cap: opts.inflight,
    max_inflight: maxInFlight,
    flow_waits: flowWaits,
    node: process.version,
    redis: redisVersion,
  };
  const ok = lost === 0 && misrouted === 0 && !stalled && process.exitCode !== 1 && deliveries === delivered + duplicates;
  console.log(
    `socket.io redis-adapter ${opts.adapter} targets=${N}: sent ${sent} delivered ${delivered} lost ${lost} dup ${duplicates}` +
    ` misrouted ${misrouted} | ${result.msgs_per_s} msg/s over ${result.elapsed_s} s | p50 ${result.p50_ms} ms` +
    ` p99 ${result.p99_ms} ms | node cpu user ${result.cpu_user_s} s sys ${result.cpu_sys_s} s` +
    ` (${result.cpu_us_per_msg} us/msg) redis cpu ${result.redis_cpu_s} s | load ${result.load_average}` +
    ` | in flight max ${maxInFlight}/${opts.inflight}, ${flowWaits} waits${ok ? '' : ' | FAILED'}`);
  console.log(JSON.stringify(result));

  // ---------- shut down: leave nothing running ----------
  shuttingDown = true;
  for (const c of clients) c.disconnect();
  for (const g of gateways) {
    await new Promise((res) => g.io.close(() => res())); // closes the http server and the adapter
  }
  await Promise.allSettled(redisClients.map((c) => c.quit()));
  await admin.quit().catch(() => {});
  if (!ok) process.exitCode = 1;
  // a safety net only: nothing should keep the loop alive, but never hang
  setTimeout(() => {
    console.error('bench.js: handles still open 5 s after shutdown; exiting');
    process.exit(process.exitCode || 1);
  }, 5000).unref();
}

main().catch((e) => {
  console.error(`bench.js: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
