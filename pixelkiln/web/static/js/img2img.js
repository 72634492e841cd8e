// /img2img: drop up to 50 images or whole folders, one prompt (or a preset) and a model
// for all; Start = POST /api/v1/batches/upload. Each batch started gets a results card
// (img2img.runs.js): its uploads by name, live, retry failed, cancel, ZIP.
import { ApiFailure, api, el, errorText, showError, t, upload } from "./kiln.js";
import { addRun, reopen } from "./img2img.runs.js";

const MAX_FILES = 50; // the server's defaults ([server] max_upload_files, max_upload_bytes);
const MAX_BYTES = 10 * 1024 * 1024; // it checks again, by content
const TYPES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"]);
const SUFFIX = /\.(jpe?g|png|gif|webp)$/i;
const SHOWN_REFUSALS = 20;

const $ = (id) => document.getElementById(id);
const form = $("i2i-form");
const dropZone = $("drop");
const pickFiles = $("pick-files");
const pickFolder = $("pick-folder");
const pickedList = $("picked");
const presetSelect = $("preset");
const backendSelect = $("backend");
const promptInput = $("prompt");
const nameInput = $("batch-name");
const startButton = $("start");
const uploadBar = $("upload-progress");

// -- files from a picker or a drop (folders walked) -------------------------------------------

const MAX_WALK = 2000; // entries read from dropped folders at most: the rest is not looked at

/** A picker's files as [{file, path}]; a folder's keep their path inside it. */
function pickedFiles(list) {
  return [...list].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
}

/** A drop's files, dropped folders walked (DataTransferItem.webkitGetAsEntry). The
 * entries must be taken while the drop event runs: the list empties after it. */
async function filesOfDrop(transfer) {
  const entries = [];
  const found = [];
  for (const item of transfer.items || []) {
    if (item.kind !== "file") continue;
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) entries.push(entry);
    else if (item.getAsFile()) found.push({ file: item.getAsFile(), path: item.getAsFile().name });
  }
  if (!transfer.items) found.push(...pickedFiles(transfer.files || []));
  for (const entry of entries) await walk(entry, found);
  return found;
}

async function walk(entry, found) {
  if (found.length >= MAX_WALK) return;
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    found.push({ file, path: entry.fullPath.replace(/^\//, "") || file.name });
    return;
  }
  if (!entry.isDirectory) return;
  const reader = entry.createReader();
  for (;;) {
    // readEntries answers a part of the folder each call, and [] at the end
    const part = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!part.length) return;
    for (const child of part) await walk(child, found);
  }
}

// -- choosing files -------------------------------------------------------------------------

let picked = []; // {file, path, url, problem}
let folderName = ""; // a dropped or chosen folder's name: the batch's name unless one is typed
const sameFile = (a, b) => a.path === b.path && a.file.size === b.file.size && a.file.lastModified === b.file.lastModified;

function megabytes(bytes) {
  return (bytes / 1024 / 1024).toFixed(1);
}

/** "850 KB", "2.1 MB": the units read the same in both languages. */
function sizeText(bytes) {
  return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${megabytes(bytes)} MB`;
}

function refusal(entry) {
  const { file } = entry;
  const typed = TYPES.has(file.type) || (!file.type && SUFFIX.test(file.name));
  if (!typed) return t("i2i.refused_type");
  if (file.size > MAX_BYTES) return t("i2i.refused_size", { size: megabytes(file.size), max: megabytes(MAX_BYTES) });
  if (file.size === 0) return t("i2i.refused_empty");
  if (picked.some((p) => sameFile(p, entry))) return t("i2i.refused_twice");
  if (picked.length >= MAX_FILES) return t("i2i.refused_count", { max: MAX_FILES });
  return null;
}

/** Add what was chosen or dropped: [{file, path}]; each refused file is named with why. */
function addFiles(entries) {
  const refused = [];
  // by name, as a file manager lists them (not the order a folder happens to hand them
  // out): the results come back in this order, and the 50 kept are the first 50 by name
  const byName = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const sorted = [...entries].sort((a, b) => byName.compare(a.path, b.path));
  for (const entry of sorted) {
    // a hidden file inside a dropped folder (.DS_Store, ._photo.jpg) is the system's, not
    // the user's: skipped quietly; one the user picked by name is refused with its reason
    const hidden = entry.file.name.startsWith(".");
    if (hidden && entry.path.includes("/")) continue;
    const why = hidden ? t("i2i.refused_hidden") : refusal(entry);
    if (why) refused.push([entry.path, why]);
    else picked.push({ ...entry, url: URL.createObjectURL(entry.file), problem: null });
  }
  const folder = entries.find((e) => e.path.includes("/"));
  if (folder && !folderName) folderName = folder.path.split("/")[0];
  nameInput.placeholder = folderName || "uploads";
  showRefused(refused);
  renderPicked();
}

function showRefused(refused) {
  const box = $("refused");
  box.hidden = refused.length === 0;
  if (!refused.length) return;
  $("refused-title").textContent = t("i2i.refused", { n: refused.length });
  const lines = refused.slice(0, SHOWN_REFUSALS).map(([path, why]) => el("li", {}, el("strong", {}, path), ": ", why));
  if (refused.length > SHOWN_REFUSALS) lines.push(el("li", {}, t("i2i.refused_more", { n: refused.length - SHOWN_REFUSALS })));
  $("refused-list").replaceChildren(...lines);
}

function renderPicked() {
  pickedList.replaceChildren(...picked.map((entry, i) => pickedItem(entry, i)));
  const bytes = picked.reduce((sum, p) => sum + p.file.size, 0);
  $("picked-count").textContent = picked.length
    ? t("i2i.picked", { n: picked.length, max: MAX_FILES, size: sizeText(bytes) })
    : t("i2i.none_picked");
  $("clear-files").hidden = picked.length === 0;
  showCost();
}

function pickedItem(entry, i) {
  const name = entry.path;
  return el(
    "li",
    { class: entry.problem ? "bad" : null },
    el(
      "figure",
      {},
      el("img", { src: entry.url, alt: "", loading: "lazy", decoding: "async" }),
      el("figcaption", { title: name }, name),
      entry.problem ? el("p", { class: "error" }, entry.problem) : null,
    ),
    el(
      "button",
      {
        type: "button",
        class: "ghost remove",
        "aria-label": t("i2i.remove", { name }),
        title: t("i2i.remove", { name }),
        onclick: () => removePicked(i),
      },
      el("span", { "aria-hidden": "true" }, "×"),
    ),
  );
}

function removePicked(i) {
  const [gone] = picked.splice(i, 1);
  URL.revokeObjectURL(gone.url);
  renderPicked();
  const buttons = pickedList.querySelectorAll("button.remove");
  (buttons[Math.min(i, buttons.length - 1)] || $("choose-files")).focus();
}

function clearPicked() {
  for (const entry of picked) URL.revokeObjectURL(entry.url);
  picked = [];
  folderName = "";
  nameInput.placeholder = "uploads";
  renderPicked();
}

$("choose-files").addEventListener("click", () => pickFiles.click());
$("choose-folder").addEventListener("click", () => pickFolder.click());
$("clear-files").addEventListener("click", () => {
  clearPicked();
  $("refused").hidden = true;
  $("choose-files").focus();
});
for (const input of [pickFiles, pickFolder]) {
  input.addEventListener("change", () => {
    addFiles(pickedFiles(input.files));
    input.value = ""; // the same files may be chosen again after a removal
  });
}

// a file dropped beside the zone must not replace the page with the picture
for (const type of ["dragover", "drop"]) {
  document.addEventListener(type, (event) => {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) event.preventDefault();
  });
}
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("over");
});
dropZone.addEventListener("dragleave", (event) => {
  if (!dropZone.contains(event.relatedTarget)) dropZone.classList.remove("over");
});
dropZone.addEventListener("drop", async (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  try {
    addFiles(await filesOfDrop(event.dataTransfer));
  } catch (error) {
    showError(error);
  }
});

// -- presets, models, cost ------------------------------------------------------------------

let presets = [];
let backends = [];

async function loadChoices() {
  try {
    [presets, backends] = await Promise.all([api("/presets"), api("/backends")]);
  } catch (error) {
    showError(error);
    return;
  }
  const groups = new Map();
  for (const preset of presets) {
    const key = preset.category || "";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(el("option", { value: preset.id }, preset.title));
  }
  for (const [category, options] of groups) {
    presetSelect.append(el("optgroup", { label: category || t("i2i.general") }, options));
  }
  backendSelect.replaceChildren(
    ...backends.map((b) => {
      const price = b.credits_per_image ? ` — ${t("i2i.price", { n: b.credits_per_image })}` : "";
      return el("option", { value: b.name }, `${b.name}${b.model ? ` · ${b.model}` : ""}${price}`);
    }),
  );
  showPreset();
  showCost();
}

function showPreset() {
  const preset = presets.find((p) => String(p.id) === presetSelect.value);
  const text = $("preset-text");
  text.textContent = preset ? t("i2i.preset_text", { content: preset.content }) : "";
  text.hidden = !preset;
}

function showCost() {
  const backend = backends.find((b) => b.name === backendSelect.value);
  const cost = $("cost");
  const n = backend ? backend.credits_per_image * picked.length : 0;
  cost.hidden = n === 0;
  cost.textContent = t("i2i.cost", { n });
}

presetSelect.addEventListener("change", () => {
  showPreset();
  clearPromptError();
});
backendSelect.addEventListener("change", showCost);

// -- start ----------------------------------------------------------------------------------

function formError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = !text;
}

function promptError(text) {
  $("prompt-error").textContent = text;
  $("prompt-error").hidden = false;
  promptInput.setAttribute("aria-invalid", "true");
  promptInput.focus();
}

function clearPromptError() {
  $("prompt-error").hidden = true;
  promptInput.removeAttribute("aria-invalid");
}
promptInput.addEventListener("input", clearPromptError);

function fields() {
  const name = nameInput.value.trim() || folderName;
  return {
    name,
    prompt: promptInput.value.trim(),
    preset_id: presetSelect.value,
    backend: backendSelect.value,
    negative_prompt: $("negative").value.trim(),
    denoise: $("denoise").value,
  };
}

/** POST the form, the bar showing the bytes sent. */
function send(body) {
  return upload("/batches/upload", body, {
    onProgress: (share) => {
      uploadBar.hidden = false;
      uploadBar.value = Math.round(100 * share);
    },
  });
}

function uploadFailed(error) {
  if (error instanceof ApiFailure && error.field === "prompt") {
    promptError(errorText(error));
    return;
  }
  if (error instanceof ApiFailure) {
    for (const problem of error.problems) {
      const match = /^files\[(\d+)\]$/.exec(problem.where || "");
      if (match && picked[Number(match[1])]) picked[Number(match[1])].problem = problem.message;
    }
    renderPicked();
  }
  formError(errorText(error));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError("");
  clearPromptError();
  if (!picked.length) {
    formError(t("i2i.need_files"));
    $("choose-files").focus();
    return;
  }
  if (!promptInput.value.trim() && !presetSelect.value) {
    promptError(t("i2i.need_prompt"));
    return;
  }
  for (const entry of picked) entry.problem = null; // the server says again what is wrong
  const body = new FormData();
  for (const entry of picked) body.append("files", entry.file, entry.file.name);
  for (const [key, value] of Object.entries(fields())) if (value !== "") body.append(key, value);
  startButton.disabled = true;
  $("upload-status").textContent = t("i2i.uploading", { n: picked.length });
  try {
    const batch = await send(body);
    clearPicked();
    $("refused").hidden = true;
    addRun(batch);
    $("upload-status").textContent = t("i2i.started", { name: batch.name, n: batch.counts.total });
  } catch (error) {
    $("upload-status").textContent = "";
    uploadFailed(error);
  } finally {
    startButton.disabled = false;
    uploadBar.hidden = true;
    uploadBar.value = 0;
  }
});

loadChoices();
renderPicked();
reopen();
