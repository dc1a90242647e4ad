// The console's API client: the key lives in sessionStorage (this tab only) and goes out as
// `Authorization: Bearer`; problems (RFC 9457) become ApiError with the server's detail.
//
// Exports: ApiError, getKey, setKey, forgetKey, api.

const KEY = "crm-ledger.api-key";

/** An answer that is not 2xx: status and the problem document's detail. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

async function request(path, { method = "GET", body, headers = {} } = {}) {
  const key = getKey();
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method === "POST") init.headers["Idempotency-Key"] = crypto.randomUUID();
  const response = await fetch(path, init);
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText };
    }
    const error = new ApiError(response.status, problem);
    window.dispatchEvent(new CustomEvent("api-error", { detail: error }));
    throw error;
  }
  return response;
}

/** JSON of `method path` (with `body` as JSON); throws ApiError. Adds `_status`. */
export async function api(path, options = {}) {
  const response = await request(path, options);
  const data = await response.json();
  if (data && typeof data === "object") Object.defineProperty(data, "_status", { value: response.status });
  return data;
}
