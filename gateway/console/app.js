// The pyfc web console: plain ES module, no build. It speaks only the public /v1 API with
// the key the user enters, kept in this tab's sessionStorage (never in a URL). Every
// string from the API reaches the page as a text node (h() below), never parsed as HTML.

const KEY = "pyfc.apiKey";
const main = document.getElementById("main");

// --- helpers --------------------------------------------------------------------------

/** An element; string children become text nodes (so API strings are never parsed). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's children: arrays flattened, null and false dropped, strings as text. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const enc = encodeURIComponent;
const pretty = (v) => JSON.stringify(v, null, 2);

class ApiError extends Error {
  constructor(status, body) {
    super(body.errorMessage || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
  /** The error as the API wrote it: its code and message. */
  text() {
    return this.body.errorCode ? `${this.body.errorCode}: ${this.body.errorMessage}` : this.message;
  }
}

async function api(method, path, { json, body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) init.body = body;
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);  // the key is refused: sign in again
    setTimeout(route, 1500);
  }
  if (raw) return resp;
  const text = await resp.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = { errorMessage: text }; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function errorBox(e) {
  return h("div", { class: "error", role: "alert" }, e instanceof ApiError ? e.text() : String(e));
}

/** A section that shows "Loading…", then what `render` returns, or the API's error. */
function panel(title, render) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const sec = h("section", {}, title ? h("h2", {}, title) : null, body);
  const refresh = async () => {
    try {
      const content = await render(refresh);
      fill(body, content);
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  };
  refresh();
  return sec;
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function kv(obj) {
  return h("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) => [
    h("dt", {}, k), h("dd", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "")),
  ]));
}

/** A button that runs `action`, disabled while it runs; its error shows in `out`. */
function actionButton(label, action, out, cls, id) {
  const b = h("button", { type: "button", class: cls, id }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    if (out) out.replaceChildren();
    try {
      await action();
    } catch (e) {
      if (out) out.replaceChildren(errorBox(e)); else alert(e instanceof ApiError ? e.text() : e);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

const fnPath = (s, f) => `/v1/services/${enc(s)}/functions/${enc(f)}`;

// --- pages ----------------------------------------------------------------------------

function loginPage() {
  const input = h("input", { type: "password", id: "apikey", autocomplete: "off", placeholder: "API key" });
  const out = h("div");
  const form = h("form", { class: "login" },
    h("section", {}, h("h2", {}, "Sign in"),
      h("p", { class: "muted" }, "Your API key stays in this browser tab (sessionStorage) and is sent only as an Authorization header."),
      input, h("div", { class: "row" }, h("button", { type: "submit", id: "signin" }, "Sign in")), out));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("GET", "/v1/tenant");
      route();
    } catch (e) {
      sessionStorage.removeItem(KEY);
      out.replaceChildren(errorBox(e));
    }
  });
  return form;
}

function servicesPage() {
  return [h("h1", {}, "Services"), statsPanel("/v1/stats", true), panel("Services", async () => {
    const data = await api("GET", "/v1/services?limit=100");
    return table(["Service", "Description", "Modified"], data.services.map((s) => [
      h("a", { href: `#/services/${enc(s.serviceName)}` }, s.serviceName), s.description || "", s.lastModifiedTime || "",
    ]), "No services yet: create one with the CLI or the API.");
  })];
}

function functionsPage(service) {
  const search = h("input", { type: "search", id: "search", placeholder: "Search functions" });
  let all = [];
  const list = h("div");
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const rows = all.filter((f) => f.functionName.toLowerCase().includes(q));
    list.replaceChildren(table(["Function", "Runtime", "Handler", "Memory", "Modified"], rows.map((f) => [
      h("a", { href: `#/services/${enc(service)}/functions/${enc(f.functionName)}` }, f.functionName),
      f.runtime || "", f.handler || "", String(f.memorySize ?? ""), f.lastModifiedTime || "",
    ]), q ? "No function matches." : "No functions in this service."));
  };
  search.addEventListener("input", draw);
  return [h("h1", {}, "Service ", service),
    panel("Service", async () => kv(await api("GET", `/v1/services/${enc(service)}`))),
    panel("Functions", async () => {
      all = (await api("GET", `/v1/services/${enc(service)}/functions?limit=100`)).functions;
      draw();
      return [h("div", { class: "row" }, search), list];
    })];
}

function invokePanel(service, fn) {
  const payload = h("textarea", { id: "payload", placeholder: "payload (sent as the request body)" });
  const kind = h("select", { id: "invocation-type" }, h("option", { value: "Sync" }, "Sync"), h("option", { value: "Async" }, "Async"));
  const qualifier = h("input", { id: "qualifier", placeholder: "qualifier (LATEST, version or alias)" });
  const out = h("div", { id: "invoke-result" });
  const run = async () => {
    const q = qualifier.value.trim();
    const svc = q ? `${service}.${q}` : service;
    const started = performance.now();
    const resp = await api("POST", `${fnPath(svc, fn)}/invocations`, {
      body: payload.value, raw: true,
      headers: { "X-Fc-Invocation-Type": kind.value, "X-Fc-Log-Type": "Tail" },
    });
    const ms = Math.round(performance.now() - started);
    const text = await resp.text();
    const requestId = resp.headers.get("X-Fc-Request-Id") || "";
    const errType = resp.headers.get("X-Fc-Error-Type");
    const tail = resp.headers.get("X-Fc-Log-Result");
    let logText = "";
    if (tail) {
      const bytes = Uint8Array.from(atob(tail), (c) => c.charCodeAt(0));
      logText = new TextDecoder().decode(bytes);
    }
    let shown = text;
    if (!resp.ok) {
      try { const b = JSON.parse(text); shown = `${b.errorCode}: ${b.errorMessage}`; } catch { /* as is */ }
    }
    if (resp.status === 202 && requestId) {
      fill(out, kv({ status: "202 Accepted", requestId }), h("p", { class: "muted", id: "async-state" }, "Queued…"));
      const state = out.querySelector("#async-state");
      for (let i = 0; i < 600; i++) {
        const rec = await api("GET", `${fnPath(service, fn)}/invocations/${enc(requestId)}`);
        if (rec.status === "Succeeded" || rec.status === "Failed") {
          fill(out, kv({ status: rec.status, requestId, attempt: rec.attempt, created: rec.createdTime, finished: rec.finishedTime, ...(rec.errorType ? { errorType: rec.errorType, errorMessage: rec.errorMessage } : {}) }),
            h("h3", {}, "Result"), h("pre", { class: rec.status === "Succeeded" ? "result" : "result error" }, rec.resultEncoding === "base64" ? `(base64) ${rec.result}` : rec.result ?? ""));
          return;
        }
        state.textContent = `${rec.status}…`;
        await new Promise((r) => setTimeout(r, 500));
      }
      return;
    }
    fill(out,
      kv({ status: resp.status, duration: `${ms} ms`, requestId, version: resp.headers.get("X-Fc-Invocation-Service-Version") || "", ...(errType ? { errorType: errType } : {}) }),
      h("h3", {}, "Result"), h("pre", { class: resp.ok && !errType ? "result" : "result error" }, shown),
      logText ? [h("h3", {}, "Log tail"), h("pre", { class: "log-tail" }, logText)] : null,
    );
  };
  return h("section", {}, h("h2", {}, "Invoke"), payload,
    h("div", { class: "row" }, kind, qualifier, actionButton("Invoke", run, out, undefined, "invoke")), out);
}

function releasesPanel(service) {
  const base = `/v1/services/${enc(service)}`;
  return panel("Versions and aliases", async (refresh) => {
    const [versions, aliases] = await Promise.all([api("GET", `${base}/versions?limit=100`), api("GET", `${base}/aliases?limit=100`)]);
    const out = h("div");
    const aliasRows = aliases.aliases.map((a) => {
      const weights = a.additionalVersionWeight || {};
      const [extraVersion, extraWeight] = Object.entries(weights)[0] || ["", 0];
      const ver = h("input", { value: a.versionId, size: 4, "aria-label": `${a.aliasName} version` });
      const gray = h("input", { value: extraVersion, size: 4, placeholder: "gray version", "aria-label": `${a.aliasName} gray version` });
      const weight = h("input", { type: "number", min: 0, max: 1, step: 0.05, value: extraWeight, "aria-label": `${a.aliasName} weight` });
      const save = actionButton("Save", async () => {
        const w = gray.value.trim() ? { [gray.value.trim()]: Number(weight.value) } : {};
        await api("PUT", `${base}/aliases/${enc(a.aliasName)}`, { json: { versionId: ver.value.trim(), additionalVersionWeight: w } });
        refresh();
      }, out);
      const older = versions.versions.map((v) => v.versionId).filter((v) => Number(v) < Number(a.versionId)).sort((x, y) => Number(y) - Number(x))[0];
      const rollback = older ? actionButton(`Roll back to ${older}`, async () => {
        await api("PUT", `${base}/aliases/${enc(a.aliasName)}`, { json: { versionId: older, additionalVersionWeight: {} } });
        refresh();
      }, out, "secondary") : null;
      return [a.aliasName, ver, h("span", {}, gray, " weight ", weight), h("span", { class: "row" }, save, rollback)];
    });
    const newest = versions.versions[0];
    const publish = actionButton("Publish a version", async () => { await api("POST", `${base}/versions`, { json: {} }); refresh(); }, out, "secondary");
    return [
      h("div", { class: "row" }, publish),
      table(["Version", "Description", "Created"], versions.versions.map((v) => [v.versionId, v.description || "", v.createdTime || ""]), "No versions published."),
      h("h3", {}, "Aliases"),
      table(["Alias", "Version", "Gray release", ""], aliasRows, newest ? "No aliases." : "No aliases (publish a version first)."),
      out,
    ];
  });
}

// Each trigger type's form fields (shared/trigger_types.py): [name, kind, default, choices].
// kind: text, number, list (comma-separated), choice. Anything else (an s3 filter or
// source) goes in the "more (JSON)" box, merged over the fields.
const TRIGGER_FIELDS = {
  timer: [["cronExpression", "text", "@every 1m"], ["timezone", "text", ""], ["payload", "text", ""],
    ["missedRuns", "choice", "skip", ["skip", "once", "all"]], ["overlap", "choice", "allow", ["allow", "skip", "queue"]]],
  mq: [["exchange", "text", ""], ["routingKey", "text", "#"], ["batchSize", "number", 1], ["batchWindowSeconds", "number", 0], ["amqpUrl", "text", ""]],
  s3: [["bucket", "text", ""], ["events", "list", "s3:ObjectCreated:*"], ["eventFormat", "choice", "s3", ["s3", "oss"]]],
  log: [["logstore", "text", ""], ["batchSize", "number", 100], ["batchWindowSeconds", "number", 1], ["startFrom", "text", "latest"]],
  http: [["authType", "choice", "function", ["function", "anonymous"]], ["methods", "list", "GET,POST,PUT,DELETE,HEAD,PATCH,OPTIONS"],
    ["requestFormat", "choice", "wsgi", ["wsgi", "event", "asgi"]]],
};

function triggerForm(type, box) {
  const inputs = TRIGGER_FIELDS[type].map(([name, kind, def, choices]) => {
    const input = kind === "choice"
      ? h("select", { id: `tf-${name}` }, choices.map((c) => h("option", { value: c, selected: c === def }, c)))
      : h("input", { id: `tf-${name}`, value: def, type: kind === "number" ? "number" : "text" });
    box.append(h("label", { class: "field" }, h("span", {}, name), input));
    return [name, kind, input];
  });
  return () => Object.fromEntries(inputs
    .filter(([, kind, input]) => kind !== "text" || input.value !== "")
    .map(([name, kind, input]) => [name,
      kind === "number" ? Number(input.value) : kind === "list" ? input.value.split(",").map((x) => x.trim()).filter(Boolean) : input.value]));
}

function triggersPanel(service, fn) {
  const base = `${fnPath(service, fn)}/triggers`;
  return panel("Triggers", async (refresh) => {
    const data = await api("GET", base);
    const out = h("div", { id: "trigger-error" });
    const rows = data.triggers.map((t) => [
      t.triggerName, t.triggerType, h("span", { class: t.enabled === false ? "muted" : "ok" }, t.enabled === false ? "disabled" : "enabled"),
      h("pre", {}, JSON.stringify(t.triggerConfig)),
      h("span", { class: "row" },
        actionButton(t.enabled === false ? "Enable" : "Disable", async () => { await api("PUT", `${base}/${enc(t.triggerName)}`, { json: { enabled: t.enabled === false } }); refresh(); }, out, "secondary"),
        actionButton("Delete", async () => { if (confirm(`Delete trigger ${t.triggerName}?`)) { await api("DELETE", `${base}/${enc(t.triggerName)}`); refresh(); } }, out, "danger")),
    ]);
    const name = h("input", { id: "trigger-name", placeholder: "trigger name" });
    const type = h("select", { id: "trigger-type" }, Object.keys(TRIGGER_FIELDS).map((k) => h("option", { value: k }, k)));
    const fields = h("div", { class: "fields" });
    const more = h("textarea", { id: "trigger-more", placeholder: "more (JSON), merged over the fields: e.g. {\"filter\": {...}}" });
    let read = triggerForm(type.value, fields);
    type.addEventListener("change", () => { fields.replaceChildren(); read = triggerForm(type.value, fields); });
    const create = actionButton("Create trigger", async () => {
      let extra = {};
      if (more.value.trim()) {
        try { extra = JSON.parse(more.value); } catch (e) { throw new Error(`more (JSON): ${e.message}`); }
      }
      const enabled = document.getElementById("trigger-enabled").checked;
      await api("POST", base, { json: { triggerName: name.value.trim(), triggerType: type.value, enabled, triggerConfig: { ...read(), ...extra } } });
      refresh();
    }, out);
    return [table(["Name", "Type", "State", "Config", ""], rows, "No triggers."),
      h("h3", {}, "New trigger"),
      h("div", { class: "row" }, name, type, h("label", {}, h("input", { type: "checkbox", id: "trigger-enabled", checked: true }), " enabled")),
      fields, more, h("div", { class: "row" }, create), out];
  });
}

function asyncPanel(service, fn) {
  const url = `${fnPath(service, fn)}/async-config`;
  return panel("Async config and destinations", async (refresh) => {
    let current = null;
    try { current = await api("GET", url); } catch (e) { if (!(e instanceof ApiError && e.status === 404)) throw e; }
    const dest = current?.destinationConfig || {};
    const field = (id, label, value, type = "text", placeholder = "") => {
      const input = h("input", { id, type, value: value ?? "", placeholder });
      return [h("label", { class: "field" }, h("span", {}, label), input), input];
    };
    const [retriesBox, retries] = field("async-retries", "maxAsyncRetryAttempts", current?.maxAsyncRetryAttempts ?? 3, "number");
    const [ageBox, age] = field("async-age", "maxAsyncEventAgeInSeconds", current?.maxAsyncEventAgeInSeconds ?? 86400, "number");
    const target = "acs:fc:::services/<s>/functions/<f>";
    const [okBox, onSuccess] = field("async-on-success", "onSuccess destination", dest.onSuccess?.destination, "text", target);
    const [failBox, onFailure] = field("async-on-failure", "onFailure destination", dest.onFailure?.destination, "text", target);
    const out = h("div", { id: "async-error" });
    const save = async () => {
      const d = (input) => (input.value.trim() ? { destination: input.value.trim() } : null);  // null removes it
      await api("PUT", url, { json: {
        maxAsyncRetryAttempts: Number(retries.value), maxAsyncEventAgeInSeconds: Number(age.value),
        destinationConfig: { onSuccess: d(onSuccess), onFailure: d(onFailure) },
      } });
      refresh();
    };
    return [current ? null : h("p", { class: "muted" }, "Not set: defaults apply."),
      h("div", { class: "fields" }, retriesBox, ageBox, okBox, failBox),
      h("div", { class: "row" }, actionButton("Save", save, out, undefined, "async-save"),
        current ? actionButton("Remove", async () => { await api("DELETE", url); refresh(); }, out, "secondary") : null), out];
  });
}

function logsPanel(service, fn) {
  const url = `${fnPath(service, fn)}/logs`;
  const rid = h("input", { id: "log-request-id", placeholder: "request id" });
  const q = h("input", { id: "log-text", placeholder: "text" });
  const out = h("div", { id: "logs" });
  let following = null;
  const render = (lines) => h("pre", { class: "logs" }, lines.map((l) => `${l.time} ${l.level || ""} ${l.requestId || ""} ${l.message}\n`).join(""));
  const search = async () => {
    const params = new URLSearchParams({ limit: "200" });
    if (rid.value.trim()) params.set("requestId", rid.value.trim());
    if (q.value.trim()) params.set("q", q.value.trim());
    const data = await api("GET", `${url}?${params}`);
    out.replaceChildren(data.logs.length ? render(data.logs) : h("p", { class: "muted" }, "No log lines."));
  };
  const follow = h("button", { type: "button", class: "secondary", id: "log-follow" }, "Follow");
  follow.addEventListener("click", async () => {
    if (following) { following.abort(); following = null; follow.textContent = "Follow"; return; }
    following = new AbortController();
    const stop = following;
    window.addEventListener("hashchange", () => stop.abort(), { once: true });
    follow.textContent = "Stop";
    const pre = h("pre", { class: "logs following" });
    out.replaceChildren(pre);
    try {
      const resp = await fetch(`${url}?follow=true`, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, signal: following.signal });
      if (!resp.ok) throw new ApiError(resp.status, await resp.json());
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        const parts = buf.split("\n");
        buf = parts.pop();
        for (const p of parts) if (p.trim()) { const l = JSON.parse(p); pre.append(`${l.time} ${l.level || ""} ${l.requestId || ""} ${l.message}\n`); }
      }
    } catch (e) {
      if (e.name !== "AbortError") out.append(errorBox(e));
    }
  });
  return h("section", {}, h("h2", {}, "Logs"),
    h("div", { class: "row" }, rid, q, actionButton("Search", search, out, undefined, "log-search"), follow), out);
}

function statsPanel(url, perFunction = false) {
  const window_ = h("select", { id: "stats-window" }, ["15m", "1h", "6h", "1d"].map((w) => h("option", { value: w }, w)));
  const box = h("div", { class: "chart", id: "stats-chart" });
  const draw = async () => {
    const data = await api("GET", `${url}?window=${enc(window_.value)}`);
    const s = data.series;
    const t = s.map((p) => Date.parse(p.time) / 1000);
    box.replaceChildren(kv({ invocations: data.invocations, errors: data.errors, throttles: data.throttles, "p50 ms": data.durationP50Ms ?? "-", "p99 ms": data.durationP99Ms ?? "-", "cold starts": data.coldStarts, "dead letters": data.deadLetters }));
    if (perFunction) {
      box.append(table(["Function", "Invocations", "Errors", "Throttles", "p99 ms", "Cold starts", "Dead letters"], data.functions.map((f) => [
        h("a", { href: `#/services/${enc(f.serviceName)}/functions/${enc(f.functionName)}` }, `${f.serviceName}/${f.functionName}`),
        String(f.invocations), String(f.errors), String(f.throttles), String(f.durationP99Ms ?? "-"), String(f.coldStarts), String(f.deadLetters),
      ]), "No invocations in this window."));
    }
    if (!window.uPlot) return;
    const width = Math.max(280, Math.min(box.clientWidth || 800, 1000));
    const counts = new uPlot({
      width, height: 200, title: "Invocations, errors, throttles, cold starts",
      series: [{}, { label: "invocations", stroke: "#1f6feb" }, { label: "errors", stroke: "#b42318" }, { label: "throttles", stroke: "#dc6803" }, { label: "cold starts", stroke: "#7a5af8" }],
    }, [t, s.map((p) => p.invocations), s.map((p) => p.errors), s.map((p) => p.throttles), s.map((p) => p.coldStarts)], box);
    const durations = new uPlot({
      width, height: 200, title: "Duration (ms)",
      series: [{}, { label: "p50", stroke: "#067647" }, { label: "p99", stroke: "#b42318" }],
    }, [t, s.map((p) => p.durationP50Ms), s.map((p) => p.durationP99Ms)], box);
    return [counts, durations];
  };
  const out = h("div");
  window_.addEventListener("change", () => draw().catch((e) => out.replaceChildren(errorBox(e))));
  draw().catch((e) => out.replaceChildren(errorBox(e)));
  return h("section", {}, h("h2", {}, "Stats"), h("div", { class: "row" }, window_, actionButton("Refresh", draw, out, "secondary")), out, box);
}

function invocationPanel(service, fn) {
  const rid = h("input", { id: "invocation-id", placeholder: "request id of an async invocation" });
  const out = h("div", { id: "invocation" });
  const look = async () => {
    const rec = await api("GET", `${fnPath(service, fn)}/invocations/${enc(rid.value.trim())}`);
    const { result, ...rest } = rec;
    fill(out, kv(rest), result !== undefined ? h("pre", { class: "result" }, result) : null);
  };
  return h("section", {}, h("h2", {}, "Async invocation"), h("div", { class: "row" }, rid, actionButton("Look up", look, out)), out);
}

function functionPage(service, fn) {
  const download = actionButton("Download code", async () => {
    const resp = await api("GET", `${fnPath(service, fn)}/code`, { raw: true });
    if (!resp.ok) throw new ApiError(resp.status, await resp.json());
    const a = h("a", { href: URL.createObjectURL(await resp.blob()), download: `${fn}.zip` });
    document.body.append(a);
    a.click();
    a.remove();
  }, null, "secondary");
  return [
    h("h1", {}, h("a", { href: `#/services/${enc(service)}` }, service), " / ", fn),
    panel("Configuration", async () => [kv(await api("GET", fnPath(service, fn))), h("div", { class: "row" }, download)]),
    invokePanel(service, fn),
    logsPanel(service, fn),
    statsPanel(`${fnPath(service, fn)}/stats`),
    invocationPanel(service, fn),
    releasesPanel(service),
    triggersPanel(service, fn),
    asyncPanel(service, fn),
    panel("Provision config", async () => {
      try { return kv(await api("GET", `${fnPath(service, fn)}/provision-config`)); } catch (e) {
        if (e instanceof ApiError && e.status === 404) return h("p", { class: "muted" }, "None.");
        throw e;
      }
    }),
  ];
}

function dlqPage() {
  return [h("h1", {}, "Dead letters"), panel("", async (refresh) => {
    const data = await api("GET", "/v1/dlq?limit=100");
    const out = h("div", { id: "dlq-error" });
    const detail = h("div");
    const rows = data.deadLetters.map((d) => [
      h("span", { class: "mono" }, d.requestId), `${d.serviceName || ""}/${d.functionName || ""}`, d.errorType || "", d.errorMessage || "",
      h("span", { class: "row" },
        actionButton("Inspect", async () => { detail.replaceChildren(h("pre", {}, pretty(await api("GET", `/v1/dlq/${enc(d.requestId)}`)))); }, out, "secondary"),
        actionButton("Redrive", async () => { await api("POST", `/v1/dlq/${enc(d.requestId)}/redrive`); refresh(); }, out),
        actionButton("Delete", async () => { await api("DELETE", `/v1/dlq/${enc(d.requestId)}`); refresh(); }, out, "danger")),
    ]);
    return [h("div", { class: "row" },
      actionButton("Redrive all", async () => { await api("POST", "/v1/dlq/redrive"); refresh(); }, out, "secondary"),
      actionButton("Purge all", async () => { if (confirm("Purge every dead letter?")) { await api("DELETE", "/v1/dlq"); refresh(); } }, out, "danger")),
    out, table(["Request id", "Function", "Error", "Message", ""], rows, "No dead letters."), detail];
  })];
}

// --- router ---------------------------------------------------------------------------

function route() {
  const signout = document.getElementById("signout");
  if (!sessionStorage.getItem(KEY)) {
    signout.hidden = true;
    main.replaceChildren(loginPage());
    return;
  }
  signout.hidden = false;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  let page;
  if (parts[0] === "services" && parts.length === 2) page = functionsPage(parts[1]);
  else if (parts[0] === "services" && parts[2] === "functions" && parts.length === 4) page = functionPage(parts[1], parts[3]);
  else if (parts[0] === "dlq") page = dlqPage();
  else page = servicesPage();
  fill(main, page);
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  route();
});
window.addEventListener("hashchange", route);
route();
