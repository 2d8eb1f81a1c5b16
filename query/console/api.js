// The console's calls to its own server: /api/v1/clusters and /api/v1/sql.
// With --token set on the server, every call carries the bearer token the
// user typed; it is kept in sessionStorage (this tab only, gone when it closes).

const TOKEN_KEY = 'backbeat.console.token';

/** An answer of the server that is not a success: its kind and message, as the API words them. */
export class ApiError extends Error {
  constructor(status, kind, message, sentToken) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.sentToken = sentToken;
  }

  /** The server wants a bearer token other than the one in use (an answer to a
   * request sent before the token was changed does not count). */
  get unauthorized() {
    return this.status === 401 && this.sentToken === token();
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

async function call(path, init = {}) {
  const headers = new Headers(init.headers || {});
  headers.set('Accept', 'application/json');
  const bearer = token();
  if (bearer) {
    headers.set('Authorization', `Bearer ${bearer}`);
  }
  let response;
  try {
    response = await fetch(path, { ...init, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the server does not answer (${e.message})`, bearer);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error;
    throw new ApiError(
      response.status,
      (error && error.kind) || `http_${response.status}`,
      (error && error.message) || text.trim() || response.statusText,
      bearer,
    );
  }
  if (body === null) {
    throw new ApiError(response.status, 'bad_answer', 'the answer is not JSON', bearer);
  }
  return body;
}

/** Each cluster's beat, tempo, last window and leader. */
export function clusters() {
  return call('/api/v1/clusters');
}

/** Runs one statement: `{columns: [{name, type}], rows: [[...]]}`. */
export function sql(statement) {
  return call('/api/v1/sql', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sql: statement }),
  });
}

/** A text as an SQL string literal. */
export function literal(text) {
  return `'${String(text).replaceAll("'", "''")}'`;
}

/** A result's rows as objects keyed by column name. */
export function objects(result) {
  const names = result.columns.map((c) => c.name);
  return result.rows.map((row) => Object.fromEntries(names.map((n, i) => [n, row[i]])));
}
