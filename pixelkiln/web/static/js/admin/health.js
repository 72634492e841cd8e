// Admin → Backend health: per backend, its servers up or down (as the scheduler of this
// server knows them, or as a probe finds them), its limits, rpm and recent errors.
// Refreshed every 10 s while shown (no request reaches a backend); "Check every server
// now" asks each server once (GET /api/v1/admin/backends/health?probe=true).
import { api, el, showError, t, when } from "../kiln.js";
import { count, figures } from "./ui.js";

const REFRESH_MS = 10_000;
const PROBE_KEPT_MS = 60_000; // a probe's answer stays on screen this long before a refresh
const list = document.getElementById("health-list");
const scheduler = document.getElementById("health-scheduler");
const probeButton = document.getElementById("health-probe");
let timer = null;
let probedAt = 0;

const state = (s) => el("span", { class: `badge hs-${s}` }, t(`health.state.${s}`));

function serverRow(s) {
  return el(
    "tr",
    {},
    el("th", { scope: "row", class: "url" }, s.url || t("health.local")),
    el("td", {}, state(s.state)),
    el("td", { class: "num" }, s.latency_ms === null ? "—" : t("health.ms", { ms: Math.round(s.latency_ms) })),
    el("td", { class: "clip" }, s.error || "—"),
  );
}

function errorItem(e) {
  return el(
    "li",
    {},
    el("time", { datetime: new Date(e.at * 1000).toISOString() }, when(e.at)),
    " ",
    el("a", { href: `/batches/${e.batch_id}` }, t("health.batch", { id: e.batch_id })),
    " ",
    el("span", { class: `badge ${e.kind === "error" ? "st-failed" : "st-partial"}` }, t(`health.kind.${e.kind}`)),
    " ",
    el("span", { class: "message" }, e.message),
  );
}

function card(b) {
  const id = `health-${b.name}`;
  const numbers = el("dl", { class: "figures" });
  figures(numbers, [
    [t("health.servers_up"), b.servers_up === null ? "—" : t("conc.up_of", { up: count(b.servers_up), n: count(b.servers.length) })],
    [t("health.per_server"), t("health.per_server_value", { now: count(b.per_url), configured: count(b.configured) })],
    [t("conc.effective"), count(b.effective)],
    [t("conc.running"), count(b.running)],
    [t("health.rpm"), b.rpm === null ? t("health.no_cap") : count(b.rpm)],
    ...(b.down_since ? [[t("health.down_since"), when(b.down_since)]] : []),
  ]);
  const table = el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      { class: "data" },
      el("caption", { class: "visually-hidden" }, t("health.servers_of", { name: b.name })),
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", { scope: "col" }, t("health.server")),
          el("th", { scope: "col" }, t("health.state_col")),
          el("th", { scope: "col" }, t("health.latency")),
          el("th", { scope: "col" }, t("health.error")),
        ),
      ),
      el("tbody", {}, b.servers.map(serverRow)),
    ),
  );
  const errors = b.recent_errors.length
    ? el("ul", { class: "errors" }, b.recent_errors.map(errorItem))
    : el("p", { class: "hint" }, t("health.no_errors"));
  return el(
    "article",
    { class: "card stack health-card", "aria-labelledby": id, dataset: { backend: b.name } },
    el("h3", { id }, b.name, " ", state(b.state)),
    el("p", { class: "hint" }, [b.type, b.model].filter(Boolean).join(" · ")),
    numbers,
    table,
    el("h4", {}, t("health.recent_errors")),
    errors,
  );
}

let asked = 0; // the newest request: an older answer arriving later is dropped

async function load(probe = false) {
  const mine = ++asked;
  try {
    const health = await api("/admin/backends/health", { query: { probe: probe ? "true" : null } });
    if (mine !== asked) return;
    const known = health.scheduler === "unknown";
    const key = `health.scheduler_state.${health.scheduler}`;
    const named = t(key) === key ? health.scheduler : t(key); // a state this page does not know
    scheduler.textContent = known ? t("health.no_scheduler") : t("health.scheduler", { state: named });
    if (health.probed_at) scheduler.textContent += ` ${t("health.probed_at", { at: when(health.probed_at) })}`;
    list.replaceChildren(...health.backends.map(card));
  } catch (failure) {
    showError(failure);
  }
}

probeButton.addEventListener("click", async () => {
  probeButton.disabled = true;
  probeButton.setAttribute("aria-busy", "true");
  try {
    await load(true);
    probedAt = Date.now();
  } finally {
    probeButton.disabled = false;
    probeButton.removeAttribute("aria-busy");
    probeButton.focus();
  }
});
document.getElementById("health-refresh").addEventListener("click", () => load());

function show() {
  load();
  clearInterval(timer);
  timer = setInterval(() => {
    if (!document.hidden && Date.now() - probedAt > PROBE_KEPT_MS) load();
  }, REFRESH_MS);
}

function hide() {
  clearInterval(timer);
  timer = null;
}

export default { show, hide };
