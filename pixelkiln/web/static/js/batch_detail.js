// /batches/{id}: one batch live — progress and time left, counts, a page of its tasks
// (status, attempts, error, images), pause / resume / cancel / retry, the ZIP, and per
// task: retry, "send to Generate" (/?from_task=ID), "edit" an image (re-prompt it).
//
// Everything comes from GET /batches/{id} (its tasks paged with task_limit/task_offset,
// filtered with task_status), re-read whenever the batch's event stream says something
// happened (at most a few times a second).
import {
  api, badge, confirmDialog, duration, el, follow, page, showError, t, toast, when,
} from "./kiln.js";
import { imageFigure, resultView, throttle } from "./results.js";

const PAGE_SIZE = 50;
const FINAL = new Set(["completed", "partial", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

const state = {
  id: page.batch_id,
  offset: 0,
  filter: "",
  batch: null,
  lastEventId: null,
  following: false,
  stop: () => {},
  rows: new Map(), // task id → {sig, tr}
  sheets: null, // a sweep's contact sheets (GET /batches/{id}/sheets), once read
  sheetVersion: "",
};

// -- not found ----------------------------------------------------------------------------

function missing() {
  state.stop();
  $("bd").hidden = true;
  $("bd-missing").hidden = false;
  document.title = `${t("bd.missing_title")} · pixelkiln`;
  $("bd-missing-title").focus?.();
}

// -- the batch ----------------------------------------------------------------------------

const COUNTS = ["total", "pending", "running", "succeeded", "failed", "cancelled", "images"];

function renderSummary(batch) {
  document.title = `${batch.name} · ${t("title.batch_detail")} · pixelkiln`;
  $("bd-name").textContent = batch.name;
  $("bd-status").replaceChildren(badge(batch.status));
  $("bd-meta").textContent = t("bd.meta", { id: batch.id, created: when(batch.created_at), source: batch.source });
  const percent = `${Math.round(batch.progress * 100)} %`;
  $("bd-bar").value = batch.progress;
  $("bd-bar").setAttribute("aria-valuetext", percent);
  $("bd-percent").textContent = percent;
  $("bd-said").textContent = progressText(batch);
  $("bd-counts").replaceChildren(...COUNTS.map((name) => el("div", {},
    el("dt", {}, t(`bd.count_${name}`)), el("dd", { dataset: { count: name } }, String(batch.counts[name])))));
  renderActions(batch);
}

function progressText(batch) {
  if (FINAL.has(batch.status)) return t("bd.finished", { time: duration(batch.elapsed_seconds) });
  if (batch.status === "paused") return t("bd.paused_note");
  if (batch.status === "queued" && !batch.started_at) return t("bd.queued_note");
  return t("bd.eta", { eta: duration(batch.eta_seconds), elapsed: duration(batch.elapsed_seconds) });
}

function renderActions(batch) {
  const final = FINAL.has(batch.status);
  $("bd-pause").hidden = !["queued", "running"].includes(batch.status);
  $("bd-resume").hidden = batch.status !== "paused";
  $("bd-cancel").hidden = final;
  $("bd-retry").hidden = !batch.counts.failed;
  $("bd-retry-cancelled").hidden = !batch.counts.cancelled;
  $("bd-zip").hidden = !batch.counts.images;
  $("bd-zip").href = `/api/v1/batches/${batch.id}/images.zip`;
  $("bd-xlsx").href = `/api/v1/batches/${batch.id}/export.xlsx?headers=${page.lang === "zh" ? "zh" : "en"}`;
}

// -- its tasks ----------------------------------------------------------------------------

const signature = (task) => JSON.stringify([task.status, task.attempts, task.error, task.run,
  task.images.map((i) => i.id)]);

function taskRow(task) {
  const actions = [];
  if (task.status === "failed" || task.status === "cancelled") {
    actions.push(el("button", { type: "button", dataset: { focus: "retry" }, onclick: () => retryTask(task),
      "aria-label": t("bd.retry_task", { key: task.key }) }, t("action.retry")));
  }
  actions.push(el("a", { class: "button", href: `/?from_task=${task.id}`, dataset: { focus: "send" },
    "aria-label": t("bd.send_task", { key: task.key }) }, t("bd.send")));
  return el("tr", { dataset: { taskId: task.id, status: task.status } },
    el("td", { class: "key" }, task.key),
    el("td", { class: "prompt" }, el("span", { title: task.prompt }, task.prompt)),
    el("td", {}, badge(task.status)),
    el("td", { class: "num" }, `${task.attempts}/${task.max_attempts}`),
    el("td", { class: "error" }, task.error || ""),
    el("td", {}, el("div", { class: "thumbs mini" },
      task.images.map((image) => imageFigure(image, task, { onEdited: showEdit, compact: true })))),
    el("td", {}, el("div", { class: "actions compact" }, actions)));
}

/** Rows changed since the last read are replaced, the rest left alone (focus stays put). */
function renderTasks(batch) {
  const body = $("bd-rows");
  const ids = batch.tasks.map((task) => task.id);
  const same = ids.length === body.children.length && ids.every((id, i) => body.children[i].dataset.taskId === String(id));
  if (!same) {
    state.rows.clear();
    body.replaceChildren(...batch.tasks.map((task) => {
      const tr = taskRow(task);
      state.rows.set(task.id, { sig: signature(task), tr });
      return tr;
    }));
  } else {
    for (const task of batch.tasks) {
      const had = state.rows.get(task.id);
      const sig = signature(task);
      if (had.sig === sig) continue;
      const tr = taskRow(task);
      const focused = had.tr.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
      had.tr.replaceWith(tr);
      state.rows.set(task.id, { sig, tr });
      if (focused) (tr.querySelector(`[data-focus="${focused}"]`) || tr.querySelector("button, a"))?.focus();
    }
  }
  $("bd-empty").hidden = batch.tasks.length > 0;
  renderPager(batch);
}

function renderPager(batch) {
  const total = batch.task_total;
  const from = total ? state.offset + 1 : 0;
  const to = Math.min(state.offset + batch.tasks.length, total);
  $("bd-range").textContent = t("bd.range", { from, to, total });
  $("bd-prev").disabled = state.offset === 0;
  $("bd-next").disabled = state.offset + PAGE_SIZE >= total;
  $("bd-pager").hidden = state.offset === 0 && total <= PAGE_SIZE;
}

// -- contact sheets (a sweep batch) -----------------------------------------------------

/** A sweep batch's sheets (GET /batches/{id}/sheets: none for other batches), each an <img>
 * whose URL changes when results arrive, so the browser fetches it again (never cached). */
async function renderSheets(batch) {
  if (state.sheets === null) {
    try {
      state.sheets = (await api(`/batches/${state.id}/sheets`)).sheets;
    } catch (failure) { // a sweep too large to draw: say so where the sheets would be
      state.sheets = [];
      $("bd-sheets-error").textContent = failure.message;
      $("bd-sheets-error").hidden = false;
      $("bd-sheets-box").hidden = false;
      return;
    }
  }
  if (!state.sheets.length) return;
  const c = batch.counts;
  const version = [c.succeeded, c.failed, c.cancelled, c.running, c.images, batch.status].join(".");
  if (version === state.sheetVersion) return;
  state.sheetVersion = version;
  const box = $("bd-sheets");
  if (!box.children.length) box.replaceChildren(...state.sheets.map(sheetFigure));
  state.sheets.forEach((sheet, i) => {
    const src = `${sheet.url}${sheet.url.includes("?") ? "&" : "?"}v=${version}`;
    box.children[i].querySelector("img").src = src;
    box.children[i].querySelector("a").href = src;
  });
  $("bd-sheets-box").hidden = false;
}

function sheetFigure(sheet) {
  const set = sheet.groups > 1 ? t("bd.sheet_set", { group: sheet.group, groups: sheet.groups }) : "";
  const caption = [sheet.label, set].filter(Boolean).join(" · ");
  return el("figure", { dataset: { z: sheet.z ?? "" } },
    el("a", { href: sheet.url, target: "_blank", rel: "noopener" },
      el("img", { alt: t("bd.sheet_alt", { label: caption }).trim(), decoding: "async" })),
    caption ? el("figcaption", {}, caption) : null);
}

// -- reading and following --------------------------------------------------------------

async function load() {
  const query = { task_limit: PAGE_SIZE, task_offset: state.offset, task_status: state.filter || null };
  let batch;
  try {
    batch = await api(`/batches/${state.id}`, { query });
  } catch (failure) {
    if (failure.status === 404) missing();
    else showError(failure);
    return;
  }
  state.batch = batch;
  renderSummary(batch);
  renderTasks(batch);
  renderSheets(batch);
  $("bd-loading").hidden = true;
  $("bd-body").hidden = false;
  $("bd").removeAttribute("aria-busy");
}

const refresh = throttle(load, 400);

/** Follow the batch's events (again, after a `done`: a retry or resume starts it anew). */
function ensureFollowing() {
  if (state.following) return;
  state.following = true;
  state.stop = follow(state.id, (type, _data, id) => {
    if (id) state.lastEventId = id;
    if (type === "done") state.following = false;
    refresh();
  }, { after: state.lastEventId });
}

// -- actions ------------------------------------------------------------------------------

/** Run a change, then re-read; `then` says what happened (a toast), `focus` where to go. */
async function act(button, call, { then, focus } = {}) {
  button.disabled = true;
  try {
    const answer = await call();
    if (then) toast(then(answer), "ok");
    ensureFollowing();
    await load();
    if (focus) $(focus).focus();
  } catch (failure) {
    showError(failure);
  } finally {
    button.disabled = false;
  }
}

const post = (path, json) => () => api(path, { method: "POST", json });

function wireActions() {
  const base = `/batches/${state.id}`;
  $("bd-pause").addEventListener("click", (e) =>
    act(e.currentTarget, post(`${base}/pause`), { then: () => t("bd.paused"), focus: "bd-resume" }));
  $("bd-resume").addEventListener("click", (e) =>
    act(e.currentTarget, post(`${base}/resume`), { then: () => t("bd.resumed"), focus: "bd-pause" }));
  $("bd-retry").addEventListener("click", (e) =>
    act(e.currentTarget, post(`${base}/retry`, {}), { then: (r) => t("bd.retried", { n: r.retried }) }));
  $("bd-retry-cancelled").addEventListener("click", (e) =>
    act(e.currentTarget, post(`${base}/retry`, { include_cancelled: true }),
      { then: (r) => t("bd.retried", { n: r.retried }) }));
  $("bd-cancel").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    if (!(await confirmDialog(t("bd.cancel_confirm", { name: state.batch.name }), t("bd.cancel")))) return;
    await act(button, post(`${base}/cancel`), { then: () => t("bd.cancelled") });
  });
  $("bd-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); load(); });
  $("bd-next").addEventListener("click", () => { state.offset += PAGE_SIZE; load(); });
  $("bd-task-status").addEventListener("change", (e) => { state.filter = e.target.value; state.offset = 0; load(); });
}

async function retryTask(task) {
  try {
    await api(`/tasks/${task.id}/retry`, { method: "POST" });
    toast(t("bd.retried_task", { key: task.key }), "ok");
    ensureFollowing();
    await load();
  } catch (failure) {
    showError(failure);
  }
}

/** An edit (re-prompt) made a new batch: shown live above the tasks, linked. */
function showEdit(batch) {
  $("bd-edits-box").hidden = false;
  $("bd-edits").prepend(resultView(batch.id, { onEdited: showEdit }).node);
  toast(t("bd.edit_started", { id: batch.id }), "ok");
}

// -- start --------------------------------------------------------------------------------

if ($("bd") && state.id) {
  wireActions();
  load().then(() => { if (state.batch) ensureFollowing(); });
}
