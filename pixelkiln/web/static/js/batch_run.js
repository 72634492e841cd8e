// The batch table's run: a batch started from /batch, followed live. Its tasks (by
// position, so row i is task i + 1) go to the table; the progress bar, the counts and
// the log pane (fed by the batch's SSE events, follow() in kiln.js) live in #run.
import { api, badge, el, follow, page, showError, t } from "./kiln.js";

const LOG_LINES = 500;
const PAGE = 1000;
const $ = (id) => document.getElementById(id);

/**
 * Follow batch `batchId`: onTasks(Map position → task) after each look at it, onGone() when
 * it no longer exists (deleted). Returns a function that stops following.
 */
export function followRun(batchId, { onTasks, onGone }) {
  const run = { timer: null, finished: false, stopped: false };
  $("run").hidden = false;
  $("log").replaceChildren();
  $("edit-again").hidden = true;
  $("batch-link").href = `/batches/${batchId}`;
  $("batch-link").textContent = t("batch.open_batch_n", { id: batchId });

  async function look() {
    try {
      const tasks = new Map();
      let batch, offset = 0;
      do {
        batch = await api(`/batches/${batchId}`, { query: { task_limit: PAGE, task_offset: offset } });
        for (const task of batch.tasks) tasks.set(task.position, task);
        offset += batch.tasks.length;
      } while (batch.tasks.length && offset < batch.task_total);
      if (run.stopped) return;
      onTasks(tasks);
      $("run-progress").value = batch.progress;
      $("run-status").replaceChildren(badge(batch.status));
      $("run-counts").textContent = t("batch.counts", batch.counts);
      if (batch.finished && !run.finished) {
        run.finished = true;
        stopEvents();
        $("edit-again").hidden = false;
      }
    } catch (failure) {
      if (failure.status === 404) {
        stop();
        $("run").hidden = true;
        onGone();
        return;
      }
      showError(failure);
    }
  }

  /** One look a quarter second after the first event of a burst (not one per event). */
  function soon() {
    if (run.timer || run.stopped) return;
    run.timer = setTimeout(() => { run.timer = null; look(); }, 250);
  }

  const stopEvents = follow(batchId, (type, event) => {
    logLine(type, (event && event.data) || {}, event && event.created_at);
    soon();
  });

  function stop() {
    run.stopped = true;
    clearTimeout(run.timer);
    stopEvents();
  }

  look();
  return stop;
}

function logLine(type, data, at) {
  const key = data.item_key ? `${t("batch.task")} ${data.item_key}` : "";
  const texts = {
    batch_update: () => t("batch.log.status", { status: t(`status.${data.status}`) }),
    info: () => [key, data.message].filter(Boolean).join(": "),
    progress: () => t("batch.log.progress", { current: data.current, total: data.total, key: data.item_key ?? "—", message: data.message }),
    image_generated: () => t("batch.log.image", { key: data.item_key, k: (data.image?.index ?? 0) + 1 }),
    warning: () => [key, data.message, data.error].filter(Boolean).join(": "),
    // a batch-level error (no task at fault) names no task: "task undefined failed" never
    error: () => (data.item_key ? t("batch.log.failed", { key: data.item_key, error: data.error }) : data.error),
    done: () => t("batch.log.done", { ...data.summary, status: t(`status.${data.summary?.status}`) }),
  };
  const time = new Date((at || Date.now() / 1000) * 1000).toLocaleTimeString(page.lang === "zh" ? "zh-CN" : undefined);
  const log = $("log");
  log.append(el("div", { class: `log-${type}` }, `[${time}] ${(texts[type] || (() => type))()}`));
  while (log.childElementCount > LOG_LINES) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}
