// Admin → Stats: images per day (a bar per day, plain DOM and CSS), success rate,
// tasks by state, queue, and per backend: successes, failures, retries, mean time.
import { api, duration, el, showError, t } from "../kiln.js";
import { count, figures, goTo } from "./ui.js";

const DAYS = [7, 14, 30, 90];
const DAY_MS = 86_400_000;
const select = document.getElementById("stats-days");
const headline = document.getElementById("stats-figures");
const perDay = document.querySelector("#stats-days-table tbody");
const byState = document.getElementById("stats-tasks");
const perBackend = document.querySelector("#stats-backends tbody");
const STATES = ["pending", "running", "succeeded", "failed", "cancelled"];

/** Every day of the range, oldest first, with 0 for days without images (UTC dates). */
function everyDay(days, listed) {
  const known = new Map(listed.map((d) => [d.date, d.images]));
  const today = Math.floor(Date.now() / DAY_MS);
  const out = [];
  for (let day = today - days + 1; day <= today; day += 1) {
    const date = new Date(day * DAY_MS).toISOString().slice(0, 10);
    out.push({ date, images: known.get(date) ?? 0 });
  }
  return out;
}

function dayRow({ date, images }, most) {
  const bar = el("span", { class: "bar" });
  bar.style.width = `${most ? (images / most) * 100 : 0}%`; // CSSOM, allowed by the CSP
  return el(
    "tr",
    {},
    el("th", { scope: "row" }, date),
    el("td", { class: "num" }, count(images)),
    el("td", { class: "bar-col", "aria-hidden": "true" }, bar),
  );
}

function render(stats, days) {
  const series = everyDay(days, stats.images_per_day);
  const most = Math.max(0, ...series.map((d) => d.images));
  const total = series.reduce((sum, d) => sum + d.images, 0);
  const rate = stats.success_rate === null ? "—" : `${(stats.success_rate * 100).toFixed(1)}%`;
  figures(headline, [
    [t("stats.images_in_range", { days }), count(total)],
    [t("stats.success_rate"), rate],
    [t("stats.queue_depth"), count(stats.queue_depth)],
    [t("stats.active_batches"), count(stats.active_batches)],
  ]);
  perDay.replaceChildren(...series.slice().reverse().map((d) => dayRow(d, most)));
  figures(byState, STATES.map((s) => [t(`status.${s}`), count(stats.tasks[s] ?? 0)]));
  perBackend.replaceChildren(
    ...stats.backends.map((b) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, b.name),
        el("td", { class: "num" }, count(b.succeeded)),
        el("td", { class: "num" }, count(b.failed)),
        el("td", { class: "num" }, count(b.retries)),
        el("td", { class: "num" }, b.mean_seconds === null ? "—" : meanTime(b.mean_seconds)),
      ),
    ),
  );
  if (!stats.backends.length) {
    perBackend.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "hint" }, t("stats.no_work"))));
  }
}

/** Under a minute with tenths (generation times are often short), else as a duration. */
const meanTime = (s) => (s < 60 ? t("stats.seconds", { s: s.toFixed(s < 10 ? 2 : 1) }) : duration(s));

async function show(params) {
  const asked = Number(params.get("days"));
  const days = DAYS.includes(asked) ? asked : 14;
  select.value = String(days);
  try {
    render(await api("/admin/stats", { query: { days } }), days);
  } catch (failure) {
    showError(failure);
  }
}

select.addEventListener("change", () => goTo("stats", { days: select.value }, () => {}));

export default { show };
