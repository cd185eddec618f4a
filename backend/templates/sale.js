// Sale page client: syncs its clock with the server (compensating for the
// round trip), counts down, enables the buy button at the start, sends one
// buy request with an idempotency key (reused on retry), then polls the
// attempt until it is final. The bearer token comes from ?token=… (stored
// in localStorage) or from an earlier visit.
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('sale-data').textContent);
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  if (params.get('token')) localStorage.setItem('seckill_token', params.get('token'));
  const token = localStorage.getItem('seckill_token');
  let offset = 0;

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
  }
  const now = () => Date.now() + offset;

  function tick() {
    const left = data.starts_at_ms - now();
    if (now() >= data.ends_at_ms) { $('countdown').textContent = 'The sale has ended.'; $('buy').disabled = true; return; }
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
    const r = await fetch('/api/rounds/' + data.round_id + '/items/' + data.item_id + '/buy', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'authorization': 'Bearer ' + token, 'idempotency-key': key },
      body: JSON.stringify({ qty: 1 }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.status === 202 || r.status === 200) return poll(body.attempt_id);
    $('status').textContent = body.message || ('Error ' + r.status);
    if (r.status === 429 || r.status === 503) setTimeout(() => { $('buy').disabled = false; }, body.retry_after_ms || 1000);
  }

  async function poll(id) {
    $('status').textContent = 'Queued — waiting for your order…';
    for (let delay = 300; ; delay = Math.min(delay * 1.5, 3000)) {
      const r = await fetch('/api/attempts/' + encodeURIComponent(id), { headers: { authorization: 'Bearer ' + token } });
      const a = await r.json().catch(() => ({}));
      if (a.status === 'ordered') { $('status').textContent = 'Ordered! Order ' + a.order_id + ' — pay by ' + new Date(a.pay_by_ms).toLocaleTimeString(); return; }
      if (a.status === 'cancelled') { $('status').textContent = 'Cancelled (' + a.reason + ').'; return; }
      await new Promise((res) => setTimeout(res, delay));
    }
  }

  $('buy').addEventListener('click', buy);
  syncClock().catch(() => {}).then(tick);
})();
