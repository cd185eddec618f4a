// The live view of one round, drawn from the snapshots of
// GET /admin/rounds/{id}/events: a bar per item (sold, reserved,
// available), buy outcomes per second of this backend as an SVG chart,
// time to sold out, the writer's queue and the dead letters.

import { events } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
const POINTS = 60;
const SERIES = [
  { key: 'reserved', label: 'reserved', cls: 's-reserved' },
  { key: 'sold_out', label: 'sold out', cls: 's-sold-out' },
  { key: 'rate_limited', label: 'rate limited', cls: 's-rate-limited' },
  { key: 'unavailable', label: 'unavailable', cls: 's-unavailable' },
];

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function secs(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

export class Dashboard {
  constructor(showError) {
    this.showError = showError;
    this.abort = null;
    this.history = [];
    this.soldOut = new Map();
    this.seenAvailable = new Map();
    this.drawLegend();
  }

  // Follows `roundId` until stop(), the server ends the stream, or it is
  // refused.
  async start(roundId) {
    this.stop();
    this.history = [];
    this.soldOut.clear();
    this.seenAvailable.clear();
    $('bars').replaceChildren();
    $('dash-title').textContent = `#${roundId}`;
    $('dash-state').textContent = 'connecting…';
    $('dashboard').dataset.state = 'connecting';
    const abort = new AbortController();
    this.abort = abort;
    try {
      await events(`/admin/rounds/${roundId}/events`, (name, data) => {
        if (name === 'snapshot') this.render(JSON.parse(data));
        else if (name === 'end') this.ended(data);
      }, abort.signal);
      if (!abort.signal.aborted && $('dashboard').dataset.state !== 'ended') {
        this.ended('the stream closed');
      }
    } catch (e) {
      $('dashboard').dataset.state = 'refused';
      $('dash-state').textContent = 'not watching';
      this.showError(e);
    }
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  ended(why) {
    $('dashboard').dataset.state = 'ended';
    $('dash-state').textContent = `stream ended: ${why}`;
  }

  render(s) {
    $('dashboard').dataset.state = 'live';
    const clock = s.now_ms < s.starts_at_ms
      ? `starts in ${secs(s.starts_at_ms - s.now_ms)}`
      : s.now_ms >= s.ends_at_ms ? 'window closed' : `${secs(s.now_ms - s.starts_at_ms)} into the sale`;
    $('dash-state').textContent = `${s.name} · ${s.status} · ${clock}`;
    this.renderBars(s);
    this.history.push(s.outcomes.per_second);
    if (this.history.length > POINTS) this.history.shift();
    this.drawChart();
    $('orders-waiting').textContent = s.orders_waiting ?? 'broker unreachable';
    $('dead-count').textContent = s.dead_letters ?? 'broker unreachable';
  }

  renderBars(s) {
    const bars = $('bars');
    const soldOutTexts = [];
    for (const it of s.items) {
      let row = bars.querySelector(`[data-item-id="${it.item_id}"]`);
      if (!row) {
        row = el('div', 'item-row');
        row.dataset.itemId = it.item_id;
        const bar = el('div', 'bar');
        for (const k of ['sold', 'reserved', 'available']) bar.append(el('span', `seg ${k}`));
        row.append(el('div', 'item-title', `${it.title} (#${it.item_id})`), bar, el('div', 'counts'));
        bars.append(row);
      }
      const c = it.counters;
      if (!c || c.error) {
        row.dataset.state = c ? 'error' : 'not-preheated';
        row.querySelector('.counts').textContent = c ? `counters unreadable (${c.error})` : 'not preheated yet';
        continue;
      }
      row.dataset.state = 'live';
      row.dataset.total = c.total;
      row.dataset.sold = c.sold;
      row.dataset.reserved = c.reserved;
      row.dataset.available = c.available;
      const pct = (n) => `${c.total > 0 ? (100 * n) / c.total : 0}%`;
      row.querySelector('.seg.sold').style.width = pct(c.sold);
      row.querySelector('.seg.reserved').style.width = pct(c.reserved);
      row.querySelector('.seg.available').style.width = pct(c.available);
      row.querySelector('.counts').textContent =
        `sold ${c.sold} · reserved ${c.reserved} · available ${c.available} of ${c.total}`;
      soldOutTexts.push(this.soldOutText(it, c, s));
    }
    $('sold-out').textContent = soldOutTexts.join('; ') || '–';
  }

  // Time from the start of the sale to the snapshot where this view saw
  // the item's last unit go (server clock).
  soldOutText(it, c, s) {
    const id = it.item_id;
    if (c.available > 0) {
      this.seenAvailable.set(id, true);
      this.soldOut.delete(id);
      return `${it.title}: ${c.available} left`;
    }
    if (!this.soldOut.has(id)) {
      this.soldOut.set(id, this.seenAvailable.get(id) ? Math.max(0, s.now_ms - s.starts_at_ms) : null);
    }
    const ms = this.soldOut.get(id);
    return ms === null
      ? `${it.title}: sold out before this view opened`
      : `${it.title}: sold out ${secs(ms)} after the start`;
  }

  drawLegend() {
    const legend = $('legend');
    legend.replaceChildren(
      ...SERIES.map((s) => {
        const item = el('span', 'key');
        item.append(el('i', s.cls), document.createTextNode(s.label));
        return item;
      }),
    );
  }

  drawChart() {
    const svg = $('chart');
    const w = 400;
    const h = 120;
    const top = 14;
    const max = Math.max(1, ...this.history.flatMap((p) => SERIES.map((s) => p[s.key] ?? 0)));
    // The time axis grows with the history until it holds POINTS snapshots.
    const span = Math.min(POINTS, Math.max(20, this.history.length));
    const x = (i) => (w * i) / (span - 1);
    const y = (v) => h - 2 - ((h - top - 4) * v) / max;
    const nodes = [];
    for (const frac of [0, 0.5, 1]) {
      const line = document.createElementNS(SVG, 'line');
      line.setAttribute('x1', 0);
      line.setAttribute('x2', w);
      line.setAttribute('y1', y(max * frac));
      line.setAttribute('y2', y(max * frac));
      line.setAttribute('class', 'grid');
      nodes.push(line);
    }
    const label = document.createElementNS(SVG, 'text');
    label.setAttribute('x', 2);
    label.setAttribute('y', 10);
    label.setAttribute('class', 'axis');
    label.textContent = `${max}/s`;
    nodes.push(label);
    const offset = span - this.history.length;
    for (const s of SERIES) {
      const pts = this.history.map((p, i) => `${x(offset + i).toFixed(1)},${y(p[s.key] ?? 0).toFixed(1)}`);
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('points', pts.join(' '));
      line.setAttribute('class', `series ${s.cls}`);
      nodes.push(line);
    }
    svg.replaceChildren(...nodes);
  }
}
