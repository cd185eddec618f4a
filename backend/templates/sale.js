// Sale page client: syncs its clock with the server (compensating for the
// round trip), counts down, enables the buy button at the start, sends one
// buy request with an idempotency key (reused on retry), then polls the
// attempt until it is final. The bearer token comes from ?token=… (stored
// in localStorage) or from an earlier visit.
//
// With purchase tickets on (data.tickets) the buy needs a ticket: the page
// asks for one at starts_at - ticket_lead_ms and buys on its buy_path with
// the x-seckill-ticket header. When the round has a proof-of-work
// challenge (data.challenge) the ticket request carries its solution: the
// page fetches the challenge during the countdown and solves it with Web
// Crypto (ALTCHA v2, PBKDF2/SHA-256: count up until the key derived from
// nonce ‖ counter starts with keyPrefix). The derivations run in the
// browser's crypto threads, a batch at a time, so the page stays responsive
// and shows its progress.
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('sale-data').textContent);
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  if (params.get('token')) localStorage.setItem('seckill_token', params.get('token'));
  const token = localStorage.getItem('seckill_token');
  const itemPath = '/api/rounds/' + data.round_id + '/items/' + data.item_id;
  const auth = { authorization: 'Bearer ' + token };
  const stage = (s) => { document.body.dataset.stage = s; };
  let offset = 0;
  let ticket = null;   // {ticket, buy_path, expires_at_ms}
  let asking = null;   // the ticket request in flight
  let solution = null; // {payload, expires_ms}
  let solving = null;  // the challenge being solved
  let retryAt = 0;     // no new attempt before (after a failed one)

  async function syncClock() {
    let best = null;
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      const r = await fetch('/api/time', { cache: 'no-store' });
      const t1 = Date.now();
      const { now_ms } = await r.json();
      const rtt = t1 - t0;
      if (best === null || rtt < best.rtt) best = { rtt, off: now_ms + rtt / 2 - t1 };
    }
    offset = best.off;
    document.body.dataset.synced = 'true';
  }
  const now = () => Date.now() + offset;

  const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
  const unhex = (s) => new Uint8Array((s.match(/../g) || []).map((h) => parseInt(h, 16)));

  // Finds the counter of an ALTCHA v2 PBKDF2 challenge.
  async function solve(c) {
    const p = c.parameters;
    const nonce = unhex(p.nonce);
    const salt = unhex(p.salt);
    const hash = p.algorithm.split('/')[1];
    const derive = async (counter) => {
      const pw = new Uint8Array(nonce.length + 4);
      pw.set(nonce);
      new DataView(pw.buffer).setUint32(nonce.length, counter);
      const key = await crypto.subtle.importKey('raw', pw, 'PBKDF2', false, ['deriveBits']);
      return hex(await crypto.subtle.deriveBits({ name: 'PBKDF2', hash, salt, iterations: p.cost }, key, p.keyLength * 8));
    };
    const batch = 8;
    const most = Math.max(data.pow_difficulty, 1);
    for (let base = 0; base <= 2 * most; base += batch) {
      const keys = await Promise.all(Array.from({ length: batch }, (_, i) => derive(base + i)));
      const hit = keys.findIndex((k) => k.startsWith(p.keyPrefix));
      if (hit >= 0) return { counter: base + hit, derivedKey: keys[hit] };
      $('prep').textContent = 'Checking your browser… ' + Math.min(99, Math.floor(100 * base / most)) + '%';
    }
    throw new Error('challenge not solved');
  }

  // Fetches and solves a challenge unless a fresh solution is at hand.
  function prepare() {
    if (!data.challenge || !token) return Promise.resolve();
    if (solution && solution.expires_ms - now() > 30000) return Promise.resolve();
    solving = solving || (async () => {
      stage('solving');
      const t0 = performance.now();
      const r = await fetch(itemPath + '/challenge', { headers: auth, cache: 'no-store' });
      const c = await r.json();
      if (!r.ok) throw new Error(c.message || ('Error ' + r.status));
      const s = await solve(c);
      const json = new TextEncoder().encode(JSON.stringify({ challenge: c, solution: s }));
      solution = { payload: btoa(String.fromCharCode(...json)), expires_ms: c.parameters.data.expires_at_ms };
      document.body.dataset.solveMs = String(Math.round(performance.now() - t0));
      document.body.dataset.solvedAt = String(Math.round(now()));
      $('prep').textContent = 'Browser check done — ready for the start.';
      stage('solved');
    })().catch((e) => {
      retryAt = now() + 5000;
      $('prep').textContent = 'Browser check failed: ' + e.message;
    }).finally(() => { solving = null; });
    return solving;
  }

  // Asks for the ticket (with the challenge's solution, spent by the request).
  function getTicket() {
    asking = asking || (async () => {
      await prepare();
      const init = { method: 'POST', headers: { ...auth } };
      if (data.challenge && solution) {
        init.headers['content-type'] = 'application/json';
        init.body = JSON.stringify({ pow: solution.payload });
      }
      const r = await fetch(itemPath + '/ticket', init);
      const b = await r.json().catch(() => ({}));
      // Spent by a ticket, or refused for good: solve a new one next time.
      if (r.ok || r.status === 403) solution = null;
      if (!r.ok) throw new Error(b.message || ('Error ' + r.status));
      ticket = b;
      document.body.dataset.ticketAt = String(Math.round(now()));
      stage('ticket');
    })().catch((e) => {
      retryAt = now() + 1000;
      $('status').textContent = 'No purchase ticket: ' + e.message;
    }).finally(() => { asking = null; });
    return asking;
  }

  function tick() {
    const t = now();
    const left = data.starts_at_ms - t;
    if (t >= data.ends_at_ms) { $('countdown').textContent = 'The sale has ended.'; $('buy').disabled = true; return; }
    const idle = token && !ticket && !asking && !solving && t >= retryAt;
    if (data.tickets && idle && t >= data.starts_at_ms - data.ticket_lead_ms) getTicket();
    else if (data.challenge && idle) prepare();
    if (left > 0) {
      $('countdown').textContent = 'Starts in ' + Math.ceil(left / 1000) + ' s';
      setTimeout(tick, Math.min(left, 250));
    } else {
      $('countdown').textContent = 'On sale now';
      $('buy').disabled = !token;
      if (!token) $('status').textContent = 'Sign in to buy (open this page with ?token=…).';
    }
  }

  const key = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);
  async function buy() {
    $('buy').disabled = true;
    $('status').textContent = 'Sending…';
    if (data.tickets && (!ticket || ticket.expires_at_ms <= now())) {
      ticket = null;
      await getTicket();
      if (!ticket) { $('buy').disabled = false; return; }
    }
    const headers = { 'content-type': 'application/json', ...auth, 'idempotency-key': key };
    if (ticket) headers['x-seckill-ticket'] = ticket.ticket;
    stage('buying');
    const r = await fetch(ticket ? ticket.buy_path : itemPath + '/buy', { method: 'POST', headers, body: JSON.stringify({ qty: 1 }) });
    const body = await r.json().catch(() => ({}));
    if (r.status === 202 || r.status === 200) return poll(body.attempt_id);
    // A refused ticket is not used again; the next click asks for another.
    if (r.status === 403) ticket = null;
    $('status').textContent = body.message || ('Error ' + r.status);
    if (r.status === 403 || r.status === 429 || r.status === 503) setTimeout(() => { $('buy').disabled = false; }, body.retry_after_ms || 1000);
  }

  async function poll(id) {
    $('status').textContent = 'Queued — waiting for your order…';
    for (let delay = 300; ; delay = Math.min(delay * 1.5, 3000)) {
      const r = await fetch('/api/attempts/' + encodeURIComponent(id), { headers: auth });
      const a = await r.json().catch(() => ({}));
      if (a.status === 'ordered') { stage('ordered'); $('status').textContent = 'Ordered! Order ' + a.order_id + ' — pay by ' + new Date(a.pay_by_ms).toLocaleTimeString(); return; }
      if (a.status === 'cancelled') { $('status').textContent = 'Cancelled (' + a.reason + ').'; return; }
      await new Promise((res) => setTimeout(res, delay));
    }
  }

  $('buy').addEventListener('click', buy);
  syncClock().catch(() => {}).then(tick);
})();
