// pixelkiln web UI: what every page's script shares. Plain ES module, no build step.
//
//   import { api, t, el, follow, toast, confirmDialog } from "./kiln.js";
//   const batch = await api("/batches/7");              // GET /api/v1/batches/7
//   await api("/batches", { method: "POST", json: spec });
//
// Every call goes to the public /api/v1 with the session cookie (same origin), so
// whatever a page does, a script with a token can do too.

const context = JSON.parse(document.getElementById("kiln-context")?.textContent || "{}");
const messages = JSON.parse(document.getElementById("kiln-messages")?.textContent || "{}");

/** The page's context: {auth, lang, page, user: {id, name, is_admin} | null, batch_id}. */
export const page = context;

/** A message in the page's language; `{name}` fields filled from `vars`. */
export function t(key, vars = {}) {
  const text = messages[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** An API error: HTTP status, the error's code and message, field and problems if any. */
export class ApiFailure extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "error";
    this.field = error.field;
    this.problems = error.problems || [];
  }
}

function signInAgain() {
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

/**
 * Call /api/v1`path`. Options: method, json (a body sent as JSON), body (FormData…),
 * query (object → ?a=1&b=2; null/undefined/"" left out), headers (e.g. Idempotency-Key),
 * raw (return the Response).
 * Throws ApiFailure for 4xx/5xx; a 401 on a page with auth on goes to /login.
 */
export async function api(path, options = {}) {
  busy(+1);
  try {
    const answer = await call(path, options);
    if ((options.method || "GET") !== "GET" && !path.startsWith("/session")) changed();
    return answer;
  } finally {
    busy(-1);
  }
}

// A write may have spent or refunded credits: the frame shows the balance again.
function changed() {
  document.dispatchEvent(new Event("kiln:balance"));
}

// How many API calls are under way, on <html data-busy>: tests (and anyone curious) can
// wait for a page to settle without guessing; a live EventSource does not count.
let inFlight = 0;
function busy(step) {
  inFlight += step;
  document.documentElement.dataset.busy = String(inFlight);
}
busy(0);

function apiUrl(path, query) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  return url;
}

async function call(path, { method = "GET", json, body, query, headers, raw = false, signal } = {}) {
  const url = apiUrl(path, query);
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...(headers || {}) },
    signal,
  };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  if (raw && response.ok) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    if (response.status === 401 && context.auth && !path.startsWith("/session")) signInAgain();
    throw new ApiFailure(response.status, data);
  }
  return data;
}

/**
 * POST a FormData to /api/v1`path` with upload progress (fetch reports none):
 * onProgress(0..1) as bytes go out; resolves to the JSON answer, throws ApiFailure as api().
 */
export function upload(path, body, { onProgress, query } = {}) {
  busy(+1);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path, query));
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        changed();
        return resolve(xhr.response);
      }
      if (xhr.status === 401 && context.auth) signInAgain();
      reject(new ApiFailure(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new Error(t("error.network"))));
    xhr.send(body);
  }).finally(() => busy(-1));
}

/** URLs of an image's file, thumbnail (size 256 or 512) and n-th input. */
export const imageUrl = (id) => `/api/v1/images/${id}/file`;
export const thumbUrl = (id, size = 256) => `/api/v1/images/${id}/thumbnail?size=${size}`;
export const assetThumbUrl = (id) => `/api/v1/assets/${id}/thumbnail`;

/**
 * Build an element: el("button", {class: "primary", onclick: fn}, "Start").
 * Text children are text nodes (never parsed as HTML: prompts cannot inject markup).
 * Attributes: class, dataset {…}, on<event> functions, boolean true/false, others as given.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "selected") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A status badge in the page's language. */
export function badge(status) {
  return el("span", { class: `badge st-${status}` }, t(`status.${status}`));
}

/** A short message at the corner, read out by screen readers; kind: info, ok, bad. */
export function toast(message, kind = "info", ms = 5000) {
  const box = el("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts")?.append(box);
  setTimeout(() => box.remove(), ms);
}

const DETAILED = new Set(["insufficient_credits"]);

/** An error's text for a person: the page's own words for a known code, else the API's. */
export function errorText(error) {
  if (error instanceof ApiFailure) {
    const key = `error.${error.code}`;
    if (!(key in messages)) return error.message;
    // the server's words carry the figures (what it costs, what is left): keep them
    return DETAILED.has(error.code) ? `${t(key)} (${error.message})` : t(key);
  }
  return String((error && error.message) || error);
}

/** Show an API failure (or any error) as a toast; returns it for chaining. */
export function showError(error) {
  toast(errorText(error), "bad", 8000);
  return error;
}

/**
 * Ask "are you sure" in the page's <dialog>; resolves true for OK. The way back is labelled
 * "Go back", never "Cancel" (beside "Cancel batch" that would invite the wrong click).
 */
export function confirmDialog(text, okLabel) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel || t("action.confirm");
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/**
 * Follow a batch's events live (SSE, with Last-Event-ID resume by the browser).
 * onEvent(type, data, id) for each event; the stream closes itself after `done`.
 * Returns a function that stops following.
 */
export const EVENT_TYPES = ["batch_update", "info", "progress", "image_generated", "warning", "error", "done"];
export function follow(batchId, onEvent, { after } = {}) {
  const query = after ? `?after=${after}` : "";
  const source = new EventSource(`/api/v1/batches/${batchId}/events${query}`);
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch { data = event.data; }
      onEvent(type, data, event.lastEventId);
      if (type === "done") source.close();
    });
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) source.close(); };
  return () => source.close();
}

/** Seconds as "1 h 5 min", "3 min 20 s", "12 s" (localised units). */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return t("time.hm", { h, m });
  if (m) return t("time.ms", { m, s: r });
  return t("time.s", { s: r });
}

/** The page's language as a locale for dates and numbers (not the browser's: an English
 * page shows English dates on a Chinese browser). */
export const locale = context.lang === "zh" ? "zh-CN" : "en-GB";

/** Epoch seconds as a local date and time, in the page's language. */
export function when(epoch) {
  if (!epoch) return "—";
  return new Date(epoch * 1000).toLocaleString(locale);
}

/** Debounce: run fn once, `ms` after the last call. */
export function debounce(fn, ms = 250) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

/** The choices the batch table and forms offer (the API accepts exactly these). */
export const ASPECT_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "16:9", "9:16"];
export const RESOLUTIONS = ["1K", "2K", "4K"];
