// What the Generate page and a batch's page share: a batch's result shown live
// (progress, then its images), a full-size viewer, and "edit" = re-prompt an image.
//
//   import { resultView, viewImage, reprompt } from "./results.js";
//   const view = resultView(batchId, { onEdited });   // a <section>, kept up to date
//   container.prepend(view.node);
//
// Messages: the pages that import this module carry the `result.*`, `viewer.*` and
// `edit.*` keys in their own messages file (generate.json, batch_detail.json).
import { api, badge, duration, el, errorText, follow, imageUrl, t, thumbUrl } from "./kiln.js";

const FINAL = new Set(["completed", "partial", "failed", "cancelled"]);

/** Run `fn` at most every `ms`, and once more after the last call (for bursts of events). */
export function throttle(fn, ms = 400) {
  let timer = null, again = false;
  const run = async () => {
    again = false;
    try { await fn(); } finally {
      timer = setTimeout(() => { timer = null; if (again) trigger(); }, ms);
    }
  };
  const trigger = () => { if (timer) again = true; else { timer = true; run(); } };
  return trigger;
}

// -- the full-size viewer -------------------------------------------------------------

let viewer = null;

function buildViewer() {
  const img = el("img", { class: "viewer-img", alt: "" });
  const caption = el("figcaption", { id: "viewer-caption" });
  const download = el("a", { class: "button", download: "" }, t("action.download"));
  const close = el("button", { type: "button", class: "ghost", value: "close" }, t("action.close"));
  const dialog = el("dialog", { class: "wide viewer", "aria-labelledby": "viewer-caption" },
    el("form", { method: "dialog" },
      el("figure", {}, img, caption),
      el("div", { class: "actions" }, download, close)));
  document.body.append(dialog);
  return { dialog, img, caption, download, close };
}

/** Show an image at full size in a <dialog> (Esc or Close shuts it). */
export function viewImage(image, text = "") {
  viewer = viewer || buildViewer();
  viewer.img.src = imageUrl(image.id);
  viewer.img.alt = text || t("result.image_alt", { id: image.id });
  viewer.caption.textContent = `#${image.id} · ${image.width}×${image.height}` + (text ? ` · ${text}` : "");
  viewer.download.href = imageUrl(image.id);
  viewer.download.setAttribute("download", `image-${image.id}.png`);
  viewer.dialog.showModal();
  viewer.close.focus();
}

// -- re-prompt ("edit") -----------------------------------------------------------------

let editor = null;

function buildEditor() {
  const field = (id, label, control) => el("div", {}, el("label", { for: id }, label), control);
  const prompt = el("textarea", { id: "edit-prompt", required: true, rows: 3 });
  const negative = el("textarea", { id: "edit-negative", rows: 2 });
  const denoise = el("input", { id: "edit-denoise", type: "number", min: 0, max: 1, step: 0.05,
    placeholder: "0.75", inputmode: "decimal", "aria-describedby": "edit-denoise-hint" });
  const error = el("p", { class: "error", role: "alert", id: "edit-error", hidden: true });
  const preview = el("img", { class: "edit-preview", alt: "" });
  const submit = el("button", { type: "submit", class: "primary", value: "ok" }, t("edit.submit"));
  const form = el("form", { method: "dialog", class: "stack", novalidate: true },
    el("h2", { id: "edit-title" }, t("edit.title")),
    el("p", { class: "hint", id: "edit-hint" }, t("edit.hint")),
    preview,
    field("edit-prompt", t("edit.prompt"), prompt),
    field("edit-negative", t("edit.negative"), negative),
    field("edit-denoise", t("edit.denoise"), denoise),
    el("p", { class: "hint", id: "edit-denoise-hint" }, t("edit.denoise_hint")),
    error,
    el("div", { class: "actions" },
      el("button", { type: "button", class: "ghost", onclick: () => dialog.close() }, t("action.cancel")),
      submit));
  const dialog = el("dialog", { class: "edit", "aria-labelledby": "edit-title",
    "aria-describedby": "edit-hint" }, form);
  document.body.append(dialog);
  return { dialog, form, prompt, negative, denoise, error, preview, submit };
}

/**
 * Ask for a new prompt for `image` and submit it (POST /images/{id}/edit): a new
 * one-task img2img batch; the original image stays. Resolves to the new batch
 * (BatchDetail), or null when the person cancels.
 */
export function reprompt(image, { prompt = "", negative_prompt = "" } = {}) {
  editor = editor || buildEditor();
  const e = editor;
  e.prompt.value = prompt;
  e.negative.value = negative_prompt;
  e.denoise.value = "";
  e.error.hidden = true;
  e.prompt.removeAttribute("aria-invalid");
  e.preview.src = thumbUrl(image.id);
  e.preview.alt = t("edit.original", { id: image.id });
  return new Promise((resolve) => {
    let made = null;
    const submit = async (event) => {
      event.preventDefault();
      const body = { prompt: e.prompt.value.trim(), negative_prompt: e.negative.value.trim() };
      if (e.denoise.value !== "") body.denoise = Number(e.denoise.value);
      if (!body.prompt) {
        e.error.textContent = t("edit.prompt_required");
        e.error.hidden = false;
        e.prompt.setAttribute("aria-invalid", "true");
        e.prompt.focus();
        return;
      }
      e.submit.disabled = true;
      try {
        made = await api(`/images/${image.id}/edit`, { method: "POST", json: body });
        e.dialog.close();
      } catch (failure) {
        e.error.textContent = errorText(failure);
        e.error.hidden = false;
      } finally {
        e.submit.disabled = false;
      }
    };
    e.form.addEventListener("submit", submit);
    e.dialog.addEventListener("close", () => {
      e.form.removeEventListener("submit", submit);
      resolve(made);
    }, { once: true });
    e.dialog.showModal();
    e.prompt.focus();
  });
}

// -- a batch's result, live ---------------------------------------------------------------

/**
 * One image as a figure: thumbnail (opens the viewer, which has its download), size,
 * download, edit; `compact` (a table cell): thumbnail and edit only.
 */
export function imageFigure(image, task, { onEdited, compact = false } = {}) {
  const alt = t("result.image_alt_prompt", { id: image.id, prompt: task.prompt });
  const edit = async () => {
    const batch = await reprompt(image, task);
    if (batch && onEdited) onEdited(batch, image);
  };
  return el("figure", { dataset: { imageId: image.id } },
    el("button", { type: "button", class: "thumb", onclick: () => viewImage(image, task.prompt),
      "aria-label": t("result.view", { id: image.id }), dataset: { focus: `view-${image.id}` } },
      el("img", { src: thumbUrl(image.id), alt, loading: "lazy", width: 256, height: 256 })),
    !compact && el("figcaption", {}, `${image.width}×${image.height}`),
    el("div", { class: "actions compact" },
      !compact && el("a", { class: "button", href: imageUrl(image.id), download: `image-${image.id}.png`,
        "aria-label": t("result.download_one", { id: image.id }) }, t("action.download")),
      el("button", { type: "button", onclick: edit, dataset: { focus: `edit-${image.id}` },
        "aria-label": t("result.edit_one", { id: image.id }) }, t("result.edit"))));
}

/**
 * A batch shown live: its name and status, a progress bar with the time left, then
 * every image as it arrives (the tasks' errors when some fail). Returns {node, stop}.
 * `onEdited(batch)` is called with the batch an "edit" of one of its images made.
 */
export function resultView(batchId, { onEdited } = {}) {
  const titleId = `result-${batchId}-title`;
  const link = el("a", { href: `/batches/${batchId}` }, t("result.batch", { id: batchId }));
  const status = el("span", { class: "result-status" });
  const progress = el("progress", { max: 1, value: 0, "aria-label": t("result.progress") });
  const said = el("p", { class: "hint", role: "status", "aria-live": "polite" });
  const images = el("div", { class: "thumbs" });
  const errors = el("ul", { class: "errors" });
  const zip = el("a", { class: "button", href: `/api/v1/batches/${batchId}/images.zip`, hidden: true,
    download: `batch-${batchId}.zip` }, t("result.zip"));
  const node = el("section", { class: "card result stack", "aria-labelledby": titleId, dataset: { batchId } },
    el("h3", { id: titleId }, link, " ", status),
    progress, said, errors, images,
    el("div", { class: "actions" },
      el("a", { class: "button", href: `/batches/${batchId}` }, t("result.open")), zip));
  const shown = new Set();
  let stopped = false;

  const render = (batch) => {
    status.replaceChildren(badge(batch.status));
    progress.value = batch.progress;
    progress.setAttribute("aria-valuetext", `${Math.round(batch.progress * 100)} %`);
    const left = FINAL.has(batch.status) ? "" : ` · ${t("result.eta", { eta: duration(batch.eta_seconds) })}`;
    said.textContent = t("result.counts", { done: batch.counts.succeeded, total: batch.counts.total,
      images: batch.counts.images }) + left;
    for (const task of batch.tasks) {
      for (const image of task.images) {
        if (shown.has(image.id)) continue;
        shown.add(image.id);
        images.append(imageFigure(image, task, { onEdited }));
      }
    }
    errors.replaceChildren(...batch.tasks.filter((task) => task.error).map((task) =>
      el("li", { class: "error" }, t("result.task_error", { key: task.key, error: task.error }))));
    zip.hidden = !(FINAL.has(batch.status) && batch.counts.images > 0);
  };
  const refresh = throttle(async () => {
    if (stopped) return;
    try {
      render(await api(`/batches/${batchId}`, { query: { task_limit: 20 } }));
    } catch (failure) {
      said.textContent = errorText(failure);
    }
  });
  refresh();
  const unfollow = follow(batchId, (type) => { if (type !== "info") refresh(); });
  const stop = () => { stopped = true; unfollow(); };
  return { node, stop };
}
