// / (Generate): one request — prompt, ratio, resolution, count, 0–4 references (from
// the reference library, library.js, or uploaded here), backend/model, advanced — submitted as a one-task batch (POST /batches); its
// progress and images shown inline (results.js).
//
// "Send to Generate" from other pages opens `/?from_task=ID`: the form is filled
// from GET /tasks/{id} (prompt, negative prompt, size → ratio and resolution, count,
// seed, steps, cfg, backend, model) and GET /tasks/{id}/references (the references).
import {
  api, assetThumbUrl, el, errorText, t, toast, ASPECT_RATIOS, RESOLUTIONS,
} from "./kiln.js";
import { openLibrary } from "./library.js";
import { resultView } from "./results.js";

const MAX_REFS = 4;
const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const submitButton = $("gen-submit");
const formError = $("gen-error");
/** the request's field → its control (the API's field names) */
const fields = {
  prompt: $("gen-prompt"),
  negative_prompt: $("gen-negative"),
  aspect_ratio: $("gen-ratio"),
  resolution: $("gen-resolution"),
  n: $("gen-count"),
  backend: $("gen-backend"),
  model: $("gen-model"),
  reference_images: $("gen-refs"),
  seed: $("gen-seed"),
  steps: $("gen-steps"),
  cfg_scale: $("gen-cfg"),
};
const errorOf = (name) => $(`${fields[name].id}-error`);

/** the chosen references: [{ref: "asset:<id>", assetId, name, thumb}] */
let refs = [];
let backends = [];

// -- choices ------------------------------------------------------------------------------

function fillChoices() {
  fields.aspect_ratio.replaceChildren(...ASPECT_RATIOS.map((r) => el("option", { value: r }, r)));
  fields.resolution.replaceChildren(...RESOLUTIONS.map((r) => el("option", { value: r }, r)));
  fields.aspect_ratio.value = "1:1";
  fields.resolution.value = "1K";
}

async function loadBackends() {
  try {
    backends = await api("/backends");
  } catch (failure) {
    formError.textContent = errorText(failure);
    formError.hidden = false;
    return;
  }
  for (const b of backends) {
    const price = b.credits_per_image ? ` · ${t("gen.price", { n: b.credits_per_image })}` : "";
    fields.backend.append(el("option", { value: b.name }, `${b.name}${b.model ? ` (${b.model})` : ""}${price}`));
  }
  describeBackend();
}

/** The chosen backend (the server's first for "default"). */
const chosenBackend = () => backends.find((b) => b.name === fields.backend.value) || backends[0];

function describeBackend() {
  const backend = chosenBackend();
  fields.model.placeholder = backend && backend.model ? backend.model : t("gen.default");
  const n = Number(fields.n.value) || 1;
  const cost = backend ? backend.credits_per_image * n : 0;
  $("gen-cost").textContent = cost ? t("gen.cost", { n: cost }) : "";
}

// -- references ---------------------------------------------------------------------------

function renderRefs() {
  const list = $("gen-refs-list");
  list.replaceChildren(...refs.map((r, i) => el("li", {},
    el("img", { src: r.thumb, alt: "", width: 64, height: 64 }),
    el("span", { class: "ref-name", title: r.name }, r.name),
    el("button", { type: "button", class: "ghost", "aria-label": t("gen.refs_remove", { name: r.name }),
      onclick: () => removeRef(i) }, "✕"))));
  $("gen-refs-hint").textContent = t("gen.refs_count", { n: refs.length, max: MAX_REFS });
  const full = refs.length >= MAX_REFS;
  $("gen-upload-button").disabled = full;
  $("gen-library").disabled = full;
}

function removeRef(index) {
  refs.splice(index, 1);
  renderRefs();
  $("gen-upload-button").focus();
}

function addRefs(chosen) {
  for (const r of chosen) {
    if (refs.length >= MAX_REFS) break;
    if (!refs.some((have) => have.ref === r.ref)) refs.push(r);
  }
  renderRefs();
}

const asRef = (asset) => ({ ref: asset.ref, assetId: asset.id, name: asset.name, thumb: assetThumbUrl(asset.id) });

async function upload(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  clearError("reference_images");
  const room = MAX_REFS - refs.length;
  if (images.length > room) showFieldError("reference_images", t("gen.refs_too_many", { max: MAX_REFS }));
  if (!images.length || room <= 0) return;
  const body = new FormData();
  for (const file of images.slice(0, room)) body.append("files", file, file.name);
  $("gen-upload-button").disabled = true;
  try {
    const assets = await api("/assets", { method: "POST", body });
    addRefs(assets.map(asRef));
    toast(t("gen.refs_uploaded", { n: assets.length }), "ok");
  } catch (failure) {
    showFieldError("reference_images", errorText(failure));
  } finally {
    renderRefs();
  }
}

/** The reference library (my uploads and past results): its choice replaces ours. */
async function pickFromLibrary() {
  clearError("reference_images");
  const picked = await openLibrary({ max: MAX_REFS, selected: refs });
  if (picked) {
    refs = [];
    addRefs(picked);
  }
  $("gen-library").focus();
}

function wireReferences() {
  $("gen-library").addEventListener("click", pickFromLibrary);
  $("gen-upload-button").addEventListener("click", () => $("gen-upload").click());
  $("gen-upload").addEventListener("change", async (event) => {
    await upload(event.target.files);
    event.target.value = "";
  });
  const box = fields.reference_images;
  box.addEventListener("dragover", (event) => { event.preventDefault(); box.classList.add("over"); });
  box.addEventListener("dragleave", () => box.classList.remove("over"));
  box.addEventListener("drop", (event) => {
    event.preventDefault();
    box.classList.remove("over");
    upload(event.dataTransfer.files);
  });
  renderRefs();
}

// -- errors -------------------------------------------------------------------------------

function showFieldError(name, message) {
  const box = errorOf(name);
  box.textContent = box.hidden ? message : `${box.textContent} ${message}`;
  box.hidden = false;
  fields[name].setAttribute("aria-invalid", "true");
  if (["seed", "steps", "cfg_scale"].includes(name)) $("gen-advanced").open = true;
}

function clearError(name) {
  errorOf(name).hidden = true;
  errorOf(name).textContent = "";
  fields[name].removeAttribute("aria-invalid");
}

function clearErrors() {
  Object.keys(fields).forEach(clearError);
  formError.hidden = true;
}

/** The API's field ("tasks[0].steps", "prompt", "reference_images") → ours, if any. */
function fieldOf(apiField) {
  const name = String(apiField || "").split(".").pop().replace(/\[\d+\]$/, "");
  return name in fields ? name : null;
}

function showFailure(failure) {
  const loose = [];
  const problems = failure.problems && failure.problems.length ? failure.problems : [];
  for (const p of problems) {
    const name = fieldOf(p.field);
    if (name) showFieldError(name, p.message);
    else loose.push(p.message);
  }
  if (!problems.length) loose.push(errorText(failure));
  if (loose.length) {
    formError.textContent = loose.join(" ");
    formError.hidden = false;
  }
  const first = Object.keys(fields).find((name) => !errorOf(name).hidden);
  (first ? fields[first] : formError).focus?.();
}

// -- the request --------------------------------------------------------------------------

const NUMBERS = { n: [1, 10], seed: [-1, 4294967295], steps: [1, 500], cfg_scale: [0, 100] };

/** Problems a person can fix before sending: {field: message}. */
function check() {
  const found = {};
  if (!fields.prompt.value.trim()) found.prompt = t("gen.prompt_required");
  for (const [name, [min, max]] of Object.entries(NUMBERS)) {
    const input = fields[name];
    if (input.value === "" && !input.validity.badInput) continue;
    const value = Number(input.value);
    const whole = name !== "cfg_scale";
    if (input.validity.badInput || !isFinite(value) || value < min || value > max || (whole && !Number.isInteger(value))) {
      found[name] = t(whole ? "gen.whole_between" : "gen.number_between", { min, max });
    }
  }
  return found;
}

/** The batch spec for the form: one task. */
function spec() {
  const prompt = fields.prompt.value.trim();
  const task = {
    prompt,
    aspect_ratio: fields.aspect_ratio.value,
    resolution: fields.resolution.value,
    n: Number(fields.n.value || 1),
  };
  const negative = fields.negative_prompt.value.trim();
  if (negative) task.negative_prompt = negative;
  if (refs.length) task.reference_images = refs.map((r) => r.ref);
  if (fields.backend.value) task.backend = fields.backend.value;
  if (fields.model.value.trim()) task.model = fields.model.value.trim();
  for (const name of ["seed", "steps", "cfg_scale"]) {
    if (fields[name].value !== "") task[name] = Number(fields[name].value);
  }
  const name = prompt.length > 60 ? `${prompt.slice(0, 59)}…` : prompt;
  return { name, tasks: [task] };
}

function showResult(batch) {
  $("results-empty").hidden = true;
  const view = resultView(batch.id, { onEdited: (made) => showResult(made) });
  $("results").prepend(view.node);
  toast(t("gen.started", { id: batch.id }), "ok");
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const problems = check();
  if (Object.keys(problems).length) {
    for (const [name, message] of Object.entries(problems)) showFieldError(name, message);
    fields[Object.keys(problems)[0]].focus();
    return;
  }
  submitButton.disabled = true;
  try {
    showResult(await api("/batches", { method: "POST", json: spec() }));
  } catch (failure) {
    showFailure(failure);
  } finally {
    submitButton.disabled = false;
  }
}

// -- "send to Generate": /?from_task=ID ---------------------------------------------------

/** The table's ratio and resolution nearest to a task's width × height. */
function sizeChoice(width, height) {
  const wanted = Math.log(width / height);
  const ratio = ASPECT_RATIOS.reduce((best, r) => {
    const [w, h] = r.split(":").map(Number);
    const [bw, bh] = best.split(":").map(Number);
    return Math.abs(Math.log(w / h) - wanted) < Math.abs(Math.log(bw / bh) - wanted) ? r : best;
  });
  const [w, h] = ratio.split(":").map(Number);
  const base = Math.sqrt((w / h) * 1024 * 1024);  // the 1K width of that ratio, about
  const scale = Math.log2(width / base);
  const resolution = RESOLUTIONS.reduce((best, r) =>
    Math.abs(Math.log2(parseInt(r, 10)) - scale) < Math.abs(Math.log2(parseInt(best, 10)) - scale) ? r : best);
  return { ratio, resolution };
}

function ensureBackend(name) {
  if (name && ![...fields.backend.options].some((o) => o.value === name)) {
    fields.backend.append(el("option", { value: name }, name));
  }
  fields.backend.value = name || "";
}

async function fillFromTask(taskId) {
  let task, references;
  try {
    [task, references] = await Promise.all([
      api(`/tasks/${taskId}`), api(`/tasks/${taskId}/references`),
    ]);
  } catch (failure) {
    const gone = failure.status === 404 || failure.status === 422;  // 422: no id at all
    formError.textContent = gone ? t("gen.from_task_missing", { id: taskId }) : errorText(failure);
    formError.hidden = false;
    return;
  }
  const p = task.params || {};
  fields.prompt.value = task.prompt;
  fields.negative_prompt.value = task.negative_prompt || "";
  if (p.width && p.height) {
    const { ratio, resolution } = sizeChoice(p.width, p.height);
    fields.aspect_ratio.value = ratio;
    fields.resolution.value = resolution;
  }
  fields.n.value = p.n || 1;
  ensureBackend(task.backend);
  fields.model.value = p.model || "";
  for (const name of ["seed", "steps", "cfg_scale"]) fields[name].value = p[name] ?? "";
  refs = [];
  addRefs(references.map(asRef));
  describeBackend();
  const notice = $("gen-filled");
  notice.replaceChildren(t("gen.from_task", { task: task.id }), " ",
    el("a", { href: `/batches/${task.batch_id}` }, t("gen.from_batch", { id: task.batch_id })));
  notice.hidden = false;
}

// -- start --------------------------------------------------------------------------------

fillChoices();
wireReferences();
form.addEventListener("submit", submit);
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});
fields.backend.addEventListener("change", describeBackend);
fields.n.addEventListener("input", describeBackend);
const fromTask = new URLSearchParams(location.search).get("from_task");
loadBackends().then(() => {
  if (fromTask && /^\d{1,19}$/.test(fromTask)) return fillFromTask(fromTask);
  if (fromTask) {
    formError.textContent = t("gen.from_task_missing", { id: fromTask });
    formError.hidden = false;
  }
  return null;
});
fields.prompt.focus();
