// /img2img's results: a card per batch started on the page, its uploads by name with
// their status live (SSE), the result when done and the error when failed; retry
// failed, cancel, the batch page and its ZIP. The batches shown stay in the address
// (?batch=ID), so a reload shows them again.
import {
  ApiFailure,
  api,
  badge,
  confirmDialog,
  debounce,
  el,
  follow,
  imageUrl,
  showError,
  t,
  thumbUrl,
  toast,
} from "./kiln.js";

const FINAL = new Set(["completed", "partial", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

// -- results: one card per batch started ----------------------------------------------------

const runs = new Map(); // batch id → run

function remember() {
  const query = [...runs.keys()].map((id) => `batch=${id}`).join("&");
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

export function addRun(batch) {
  const run = { id: batch.id, lastEvent: 0, stop: null, cells: new Map(), batch };
  run.refresh = debounce(() => refresh(run), 250);
  run.node = runCard(run);
  $("runs").prepend(run.node);
  $("results").hidden = false;
  runs.set(batch.id, run);
  remember();
  show(run, batch);
  if (!FINAL.has(batch.status)) watch(run);
  return run;
}

function runCard(run) {
  const { id, name } = run.batch;
  run.badge = el("span", {});
  run.bar = el("progress", { max: 1, value: 0, "aria-label": t("i2i.progress_label", { name }) });
  run.counts = el("span", { class: "hint" });
  run.retry = el("button", { type: "button", onclick: () => retry(run) }, t("i2i.retry_failed"));
  run.cancel = el("button", { type: "button", class: "danger", onclick: () => cancel(run) }, t("i2i.cancel_batch"));
  run.zip = el("a", { class: "button", href: `/api/v1/batches/${id}/images.zip`, download: "" }, t("i2i.zip"));
  run.grid = el("ul", { class: "thumbs results-grid", "aria-label": t("i2i.results_of", { name }) });
  return el(
    "article",
    { class: "card run", "aria-labelledby": `run-${id}-title` },
    el(
      "div",
      { class: "run-head" },
      el("h3", { id: `run-${id}-title` }, el("a", { href: `/batches/${id}` }, name)),
      run.badge,
      el("div", { class: "run-progress" }, run.bar, run.counts),
    ),
    el(
      "div",
      { class: "actions" },
      run.retry,
      run.cancel,
      el("a", { class: "button", href: `/batches/${id}` }, t("i2i.open_batch")),
      run.zip,
    ),
    run.grid,
  );
}

function show(run, batch) {
  run.batch = batch;
  const c = batch.counts;
  const done = c.succeeded + c.failed + c.cancelled;
  run.badge.replaceChildren(badge(batch.status));
  run.bar.max = Math.max(1, c.total);
  run.bar.value = done;
  const parts = [t("i2i.done_of", { done, total: c.total })];
  if (c.failed) parts.push(t("i2i.failed_n", { n: c.failed }));
  run.counts.textContent = parts.join(" · ");
  run.retry.disabled = c.failed === 0;
  run.cancel.disabled = FINAL.has(batch.status);
  run.zip.hidden = c.images === 0;
  for (const task of batch.tasks || []) showTask(run, task);
}

function showTask(run, task) {
  let cell = run.cells.get(task.id);
  if (!cell) {
    cell = taskCell(task);
    run.cells.set(task.id, cell);
    run.grid.append(cell.node);
  }
  cell.node.className = `result task-${task.status}`; // not st-*: that styles a badge's text
  cell.badge.replaceChildren(badge(task.status));
  cell.error.textContent = task.status === "failed" ? task.error || "" : "";
  cell.error.hidden = !cell.error.textContent;
  const image = (task.images || [])[0];
  const shown = image ? image.id : task.status; // what the frame holds: a result, or a mark
  if (cell.shown === shown) return;
  cell.shown = shown;
  if (!image) {
    const mark = { failed: "!", cancelled: "–" }[task.status] || "…";
    cell.frame.replaceChildren(el("span", { class: "waiting", "aria-hidden": "true" }, mark));
    cell.download.hidden = true;
    return;
  }
  const alt = t("i2i.result_of", { name: task.key });
  cell.frame.replaceChildren(
    el("a", { href: imageUrl(image.id), target: "_blank", rel: "noopener" }, el("img", { src: thumbUrl(image.id), alt, loading: "lazy", decoding: "async", width: 256, height: 256 })),
  );
  cell.download.href = imageUrl(image.id);
  cell.download.hidden = false;
  const more = (task.images || []).length - 1;
  cell.more.textContent = more > 0 ? t("i2i.more_images", { n: more }) : "";
}

function taskCell(task) {
  const cell = { shown: undefined };
  cell.frame = el("div", { class: "frame" });
  cell.badge = el("span", {});
  cell.error = el("p", { class: "error", hidden: true });
  cell.more = el("span", { class: "hint" });
  cell.download = el("a", { download: "", hidden: true, "aria-label": t("i2i.download_result", { name: task.key }) }, t("action.download"));
  cell.node = el(
    "li",
    { dataset: { key: task.key } },
    el(
      "figure",
      {},
      cell.frame,
      el("figcaption", {}, el("span", { class: "key", title: task.key }, task.key), cell.badge, cell.more),
      cell.error,
      cell.download,
    ),
  );
  return cell;
}

async function refresh(run) {
  try {
    show(run, await api(`/batches/${run.id}`, { query: { task_limit: 100 } }));
  } catch (error) {
    showError(error);
  }
}

function watch(run) {
  if (run.stop) return;
  run.stop = follow(
    run.id,
    (type, event, id) => {
      run.lastEvent = Math.max(run.lastEvent, Number(id) || 0);
      if (type !== "done") {
        run.refresh();
        return;
      }
      run.stop = null;
      const s = (event && event.data && event.data.summary) || {};
      $("run-live").textContent = t("i2i.finished", { name: run.batch.name, succeeded: s.succeeded ?? 0, failed: s.failed ?? 0 });
      refresh(run);
    },
    { after: run.lastEvent },
  );
}

async function retry(run) {
  try {
    const answer = await api(`/batches/${run.id}/retry`, { method: "POST", json: {} });
    toast(t("i2i.retried", { n: answer.retried, name: run.batch.name }), "ok");
    show(run, { ...run.batch, ...answer.batch, tasks: [] });
    watch(run);
    refresh(run);
  } catch (error) {
    showError(error);
  }
}

async function cancel(run) {
  if (!(await confirmDialog(t("i2i.cancel_confirm", { name: run.batch.name }), t("i2i.cancel_batch")))) return;
  try {
    await api(`/batches/${run.id}/cancel`, { method: "POST" });
    toast(t("i2i.cancelled", { name: run.batch.name }), "ok");
    refresh(run);
  } catch (error) {
    showError(error);
  }
}

export async function reopen() {
  const ids = new URLSearchParams(location.search).getAll("batch").filter((id) => /^\d{1,18}$/.test(id));
  for (const id of ids) {
    try {
      addRun(await api(`/batches/${id}`, { query: { task_limit: 100 } }));
    } catch (error) {
      if (!(error instanceof ApiFailure && error.status === 404)) showError(error);
    }
  }
  remember(); // drops the ids that are gone
}
