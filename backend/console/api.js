// The admin API as the console calls it: the bearer token kept in session
// storage, JSON in and out, refusals as ApiError with the API's stable
// `error` code and `message`, and server-sent events read through fetch()
// (EventSource cannot send an Authorization header).

const TOKEN_KEY = 'seckill.console.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// What a token says about its holder, read without verifying it (only the
// API verifies): {sub, role, exp} or null when it is not a JWT.
export function identity(t) {
  const parts = (t || '').split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    if (typeof claims.sub !== 'string') return null;
    return { sub: claims.sub, role: String(claims.role ?? ''), exp: claims.exp };
  } catch {
    return null;
  }
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function refusal(resp) {
  const text = await resp.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: shown as it came
  }
  return new ApiError(
    resp.status,
    body?.error ?? `http_${resp.status}`,
    body?.message ?? (text || resp.statusText),
  );
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token() ?? ''}`, ...extra };
}

// One admin call; resolves to the JSON body, rejects with ApiError.
export async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the backend did not answer: ${e.message}`);
  }
  if (!resp.ok) throw await refusal(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

// Reads a server-sent event stream, calling onEvent(name, data) for each
// event, until the server ends it (resolves) or `signal` aborts it.
export async function events(path, onEvent, signal) {
  let resp;
  try {
    resp = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal });
  } catch (e) {
    if (signal?.aborted) return;
    throw new ApiError(0, 'network', `the backend did not answer: ${e.message}`);
  }
  if (!resp.ok) throw await refusal(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let end;
      while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end).replace(/^\r?\n\r?\n/, '');
        dispatch(block, onEvent);
      }
    }
  } catch (e) {
    if (signal?.aborted) return;
    throw new ApiError(0, 'network', `the event stream broke: ${e.message}`);
  }
}

function dispatch(block, onEvent) {
  let name = 'message';
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length) onEvent(name, data.join('\n'));
}
