// The console's page: sign-in, rounds (create, submit, approve, reject),
// the live dashboard, dead letters and reconciliation. Every action is one
// admin API call with the signed-in token; the API decides who may do
// what, and its refusals are shown with their code and message.

import { ApiError, call, clearToken, identity, setToken, token } from './api.js';
import { Dashboard } from './dashboard.js';

const $ = (id) => document.getElementById(id);
const ROUND_KEY = 'seckill.console.round';

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// Shows an ApiError (code and message) or a plain note in a message box.
function show(id, what, kind) {
  const box = $(id);
  box.hidden = false;
  if (what instanceof ApiError) {
    box.className = 'msg error';
    box.dataset.code = what.code;
    const status = what.status ? `${what.status} ` : '';
    box.replaceChildren(el('code', `${status}${what.code}`), document.createTextNode(` ${what.message}`));
  } else if (what instanceof Error) {
    box.className = 'msg error';
    box.dataset.code = 'client';
    box.replaceChildren(document.createTextNode(what.message));
  } else {
    box.className = `msg ${kind ?? 'ok'}`;
    delete box.dataset.code;
    box.replaceChildren(document.createTextNode(what));
  }
}

function hide(id) {
  $(id).hidden = true;
}

// Runs an action, showing its refusal in box `id`; resolves to its result
// or undefined.
async function attempt(id, action) {
  hide(id);
  try {
    return await action();
  } catch (e) {
    show(id, e);
    return undefined;
  }
}

const dashboard = new Dashboard((e) => show('dash-error', e));

// --- sign-in ---------------------------------------------------------------

function signedIn() {
  const t = token();
  const who = t ? identity(t) : null;
  $('signin').hidden = !!who;
  $('app').hidden = !who;
  $('who').hidden = !who;
  $('who-warn').hidden = true;
  if (!who) return;
  $('who-sub').textContent = who.sub;
  $('who-role').textContent = who.role || 'no role';
  if (who.role !== 'operator' && who.role !== 'approver') {
    $('who-warn').hidden = false;
    $('who-warn').textContent =
      `This is a ${who.role || 'role-less'} token, not an operator's or an approver's: the admin API will refuse it.`;
  }
  const last = sessionStorage.getItem(ROUND_KEY);
  if (last && !$('round-id').value) {
    $('round-id').value = last;
    loadRound();
  }
}

$('signin-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token').value.trim().replace(/^Bearer\s+/i, '');
  if (!identity(t)) {
    show('signin-msg', new Error('That is not a bearer token (three dot-separated parts with a subject).'));
    return;
  }
  hide('signin-msg');
  setToken(t);
  $('token').value = '';
  signedIn();
});

$('signout-btn').addEventListener('click', () => {
  dashboard.stop();
  clearToken();
  $('round-id').value = '';
  $('round-view').hidden = true;
  for (const id of ['round-msg', 'create-msg', 'dash-error', 'dl-msg', 'rc-msg']) hide(id);
  signedIn();
});

// --- new round ---------------------------------------------------------------

const ITEM_FIELDS = [
  ['title', 'Title', 'text', 'Phone'],
  ['description', 'Description', 'text', 'A phone at a very low price'],
  ['image_url', 'Image URL', 'text', '/assets/phone.png'],
  ['original_price_cents', 'Original price (cents)', 'number', '99900'],
  ['sale_price_cents', 'Sale price (cents)', 'number', '100'],
  ['stock', 'Stock (units)', 'number', '10'],
  ['per_user_limit', 'Per-user limit', 'number', '1'],
];

function addItem() {
  const row = el('fieldset', undefined, 'item');
  row.append(el('legend', `Item ${$('items').children.length + 1}`));
  for (const [name, label, type, value] of ITEM_FIELDS) {
    const l = el('label', `${label} `);
    const input = el('input');
    input.name = name;
    input.type = type === 'number' ? 'text' : type;
    if (type === 'number') input.inputMode = 'numeric';
    input.value = value;
    l.append(input);
    row.append(l);
  }
  const remove = el('button', 'Remove');
  remove.type = 'button';
  remove.className = 'remove-item';
  remove.addEventListener('click', () => row.remove());
  row.append(remove);
  $('items').append(row);
}

// Integers go as numbers; anything else goes as typed, for the API to refuse.
function number(v) {
  const t = v.trim();
  return /^-?\d+$/.test(t) ? Number(t) : t;
}

function resetRoundForm() {
  const at = (mins) => new Date(Math.ceil(Date.now() / 60000) * 60000 + mins * 60000).toISOString();
  $('round-name').value = 'Flash sale';
  $('round-starts').value = at(10);
  $('round-ends').value = at(70);
  $('items').replaceChildren();
  addItem();
}

$('add-item').addEventListener('click', addItem);

$('round-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const items = [...$('items').querySelectorAll('fieldset.item')].map((row) => {
    const v = (n) => row.querySelector(`[name="${n}"]`).value;
    return {
      title: v('title'),
      description: v('description'),
      image_url: v('image_url'),
      original_price_cents: number(v('original_price_cents')),
      sale_price_cents: number(v('sale_price_cents')),
      stock: number(v('stock')),
      per_user_limit: number(v('per_user_limit')),
    };
  });
  const body = {
    name: $('round-name').value,
    starts_at: $('round-starts').value.trim(),
    ends_at: $('round-ends').value.trim(),
    items,
    pow_difficulty: number($('round-pow').value || '0'),
    admission_window_ms: number($('round-window').value || '0'),
  };
  const r = await attempt('create-msg', () => call('POST', '/admin/rounds', body));
  if (!r) return;
  show('create-msg', `Draft round #${r.id} created.`);
  showRound(r);
});

// --- one round ---------------------------------------------------------------

let current = null;

function fmt(iso) {
  return iso ? iso.replace('T', ' ').replace(/\.\d+/, '') : '–';
}

function showRound(r) {
  current = r;
  sessionStorage.setItem(ROUND_KEY, r.id);
  $('round-id').value = r.id;
  if (!$('rc-round').value) $('rc-round').value = r.id;
  if (!$('dash-round').value) $('dash-round').value = r.id;
  $('round-view').hidden = false;
  $('round-view').dataset.roundId = r.id;
  $('rv-name').textContent = r.name;
  $('rv-status').textContent = r.status;
  $('rv-status').dataset.status = r.status;
  $('rv-window').textContent = `${fmt(r.starts_at)} → ${fmt(r.ends_at)}`;
  $('rv-created').textContent = r.created_by ?? '–';
  $('rv-submitted').textContent = r.submitted_by ?? '–';
  $('rv-reviewed').textContent = r.reviewed_by ?? '–';
  $('rv-reason').textContent = r.reject_reason ?? '–';
  $('rv-items').replaceChildren(
    ...r.items.map((it) => {
      const tr = el('tr');
      const price = `${(it.sale_price_cents / 100).toFixed(2)} (was ${(it.original_price_cents / 100).toFixed(2)})`;
      for (const v of [it.id, it.title, price, it.stock, it.per_user_limit]) tr.append(el('td', String(v)));
      return tr;
    }),
  );
  const me = identity(token())?.sub;
  const self = r.status === 'submitted' && me && me === r.submitted_by;
  $('rv-self').hidden = !self;
  $('rv-self').textContent = self
    ? `You (${me}) submitted this round: another person, with an approver token, must approve or reject it.`
    : '';
}

async function loadRound() {
  const id = $('round-id').value.trim();
  if (!id) return;
  const r = await attempt('round-msg', () => call('GET', `/admin/rounds/${encodeURIComponent(id)}`));
  if (r) showRound(r);
}

$('load-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  loadRound();
});

async function transition(action, body) {
  if (!current) return;
  const r = await attempt('round-msg', () => call('POST', `/admin/rounds/${current.id}/${action}`, body));
  if (!r) return;
  showRound(r);
  show('round-msg', `Round #${r.id} is ${r.status}.`);
}

$('submit-btn').addEventListener('click', () => transition('submit'));
$('approve-btn').addEventListener('click', () => transition('approve'));
$('reject-btn').addEventListener('click', () => {
  const reason = $('reject-reason').value.trim();
  transition('reject', reason ? { reason } : undefined);
});
function watch(id) {
  if (!id) return;
  $('dash-round').value = id;
  hide('dash-error');
  dashboard.start(encodeURIComponent(id));
}

$('watch-btn').addEventListener('click', () => current && watch(String(current.id)));
$('dash-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  watch($('dash-round').value.trim());
});
$('dash-stop').addEventListener('click', () => {
  dashboard.stop();
  dashboard.ended('stopped here');
});

// --- dead letters ------------------------------------------------------------

async function listDeadLetters() {
  const r = await attempt('dl-msg', () => call('GET', '/admin/dead-letters?limit=200'));
  if (!r) return;
  $('dl-all').checked = false;
  $('dl-rows').replaceChildren(
    ...r.dead_letters.map((d) => {
      const tr = el('tr');
      const box = el('input');
      box.type = 'checkbox';
      box.className = 'dl-pick';
      box.value = d.attempt_id ?? '';
      box.disabled = !d.attempt_id;
      const td = el('td');
      td.append(box);
      tr.append(td);
      const where = d.round_id ? `${d.round_id} / ${d.item_id}` : '–';
      const reason = d.error ? `${d.reason}: ${d.error}` : d.reason;
      for (const v of [d.attempt_id ?? '(not an order)', d.user_id ?? '–', where, d.qty ?? '–', reason, d.failures ?? '–', d.attempt_status ?? '–']) {
        tr.append(el('td', String(v)));
      }
      return tr;
    }),
  );
  show('dl-msg', `${r.count} dead letter(s).`, 'ok');
}

async function actOnDeadLetters(action) {
  const ids = [...document.querySelectorAll('.dl-pick:checked')].map((b) => b.value).filter(Boolean);
  if (!ids.length) {
    show('dl-msg', 'Select the dead letters first.', 'warn');
    return;
  }
  const r = await attempt('dl-msg', () => call('POST', `/admin/dead-letters/${action}`, { attempt_ids: ids }));
  if (!r) return;
  await listDeadLetters();
  const summary = r.results.map((o) => `${o.attempt_id ?? '?'}: ${o.outcome}${o.order_status ? ` (${o.order_status})` : ''}`);
  show('dl-msg', `${action}: ${summary.join('; ') || 'nothing matched'}`, 'ok');
}

$('dl-load').addEventListener('click', listDeadLetters);
$('dl-replay').addEventListener('click', () => actOnDeadLetters('replay'));
$('dl-discard').addEventListener('click', () => actOnDeadLetters('discard'));
$('dl-all').addEventListener('change', () => {
  for (const b of document.querySelectorAll('.dl-pick:not(:disabled)')) b.checked = $('dl-all').checked;
});

// --- reconcile ---------------------------------------------------------------

async function reconcile(repair) {
  const id = $('rc-round').value.trim();
  const q = id ? `?round_id=${encodeURIComponent(id)}` : '';
  const r = await attempt('rc-msg', () =>
    repair ? call('POST', `/admin/reconcile/repair${q}`) : call('GET', `/admin/reconcile${q}`));
  if (!r) return;
  const abc = (c) => (c ? `${c.available} / ${c.reserved} / ${c.sold}` : 'none');
  $('rc-rows').replaceChildren(
    ...r.items.map((it) => {
      const tr = el('tr', undefined, it.differences.length ? 'differs' : '');
      const diff = it.differences.join('; ') + (it.repaired ? ' (repaired)' : '');
      for (const v of [`${it.round_id} / ${it.item_id}`, abc(it.redis), abc(it.expected), it.in_flight, diff || 'none']) {
        tr.append(el('td', String(v)));
      }
      return tr;
    }),
  );
  const verdict = r.consistent ? 'consistent' : 'differences found';
  show('rc-msg', `${r.items.length} item(s), ${verdict}${repair ? `, ${r.repaired} repaired` : ''}.`, r.consistent ? 'ok' : 'warn');
}

$('rc-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  reconcile(false);
});
$('rc-repair').addEventListener('click', () => reconcile(true));

// --- start -------------------------------------------------------------------

// scripts/demo links here with the token in the fragment (never sent to a
// server): keep it for this tab and drop it from the address bar. A
// `watch=<round id>` beside it opens that round's dashboard.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has('token')) {
  setToken(fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
}
resetRoundForm();
signedIn();
if (token() && /^[0-9]+$/.test(fragment.get('watch') ?? '')) watch(fragment.get('watch'));
document.body.dataset.ready = 'true';
