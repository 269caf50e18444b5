// The server's JSON API (host-sdk/server/src/api.rs).

async function call(method, url, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let json;
  try { json = text ? JSON.parse(text) : {}; } catch { json = { error: text }; }
  if (!response.ok) {
    const error = new Error(json.error ?? `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.problems = json.problems ?? [];
    throw error;
  }
  return json;
}

export const api = {
  nodes: () => call("GET", "/api/nodes"),
  inputs: () => call("GET", "/api/inputs"),
  graphs: () => call("GET", "/api/graphs"),
  loadGraph: (name) => call("GET", `/api/graphs/${encodeURIComponent(name)}`),
  saveGraph: (name, doc) => call("PUT", `/api/graphs/${encodeURIComponent(name)}`, doc),
  validate: (doc) => call("POST", "/api/validate", doc),
  submit: (doc) => call("POST", "/api/jobs", doc),
  cancel: (job) => call("POST", `/api/jobs/${job}/cancel`),
  outputFolder: (url) => call("GET", url),
  events: (job) => new EventSource(`/api/jobs/${job}/events`),
};
