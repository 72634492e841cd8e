// /batch: the batch table. Rows of prompts with their ratio, resolution, references, count
// and file-name prefix; Excel in and out; checked by the server (a dry run of the create)
// with every problem shown on its row; started as one batch, each row then showing its
// task's status and images, with a log fed by the batch's events.
//
// Everything is the public /api/v1: POST /tables/parse and /tables/export (the sheet),
// POST /batches?dry_run=true (check), POST /batches (start), GET /batches/{id} and its
// SSE events (progress). The unsaved table lives in localStorage, per user.
import {
  ASPECT_RATIOS, RESOLUTIONS, api, assetThumbUrl, badge, confirmDialog, el, errorText, imageUrl,
  page, showError, t, thumbUrl, toast,
} from "./kiln.js";
import { followRun } from "./batch_run.js";
import { openLibrary } from "./library.js";

const STORE = `kiln-batch-table:${page.user ? page.user.id : "local"}`;
const CELLS = ["prompt", "negative_prompt", "aspect_ratio", "resolution", "reference_images", "n", "filename_prefix"];
const MAX_REFS = 4;
const $ = (id) => document.getElementById(id);

let nextId = 1;
let state = load();
const problems = new Map();  // row id → {field: [messages]}
const run = { tasks: new Map(), stop: null };  // the started batch's tasks by position

// -- the table's state ---------------------------------------------------------------------

function blankRow(from = {}) {
  return {
    id: nextId++, key: "", prompt: "", negative_prompt: "", aspect_ratio: "1:1", resolution: "1K",
    refs: [], n: 1, filename_prefix: "", extra: {}, ...from,
  };
}

function fresh() {
  return { name: "", backend: "", model: "", rows: [blankRow()], batchId: null };
}

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && Array.isArray(saved.rows) && saved.rows.length) {
      saved.rows = saved.rows.map((row) => blankRow({ ...row, id: nextId++ }));
      return { ...fresh(), ...saved };
    }
  } catch { /* a damaged entry: start afresh */ }
  return fresh();
}

let saveTimer = null;
function save() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveNow, 200);
}
function saveNow() {
  clearTimeout(saveTimer);
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch (error) {
    showError(error);  // full storage: say so rather than lose edits silently
  }
}
addEventListener("pagehide", saveNow);

/** A task's fields as a row; fields the table has no column for ride along (sent, exported). */
function rowOf(fields) {
  const { key, prompt, negative_prompt, aspect_ratio, resolution, reference_images, n, filename_prefix, ...extra } = fields;
  return blankRow({
    key: key ?? "", prompt: prompt ?? "", negative_prompt: negative_prompt ?? "",
    aspect_ratio: aspect_ratio || "1:1", resolution: String(resolution || "1K").toUpperCase(),
    refs: (reference_images || []).map(refOf), n: n ?? 1, filename_prefix: filename_prefix ?? "", extra,
  });
}

function refOf(ref) {
  const assetId = Number(String(ref).replace(/^asset:/, ""));
  return { ref, assetId, name: ref, thumb: Number.isInteger(assetId) && assetId > 0 ? assetThumbUrl(assetId) : "" };
}

/** The row as a task of the batch spec: empty cells left out (the defaults apply). */
function taskOf(row) {
  const task = { ...row.extra };
  if (row.key) task.key = row.key;
  for (const field of ["prompt", "negative_prompt", "filename_prefix"]) {
    if (String(row[field]).trim()) task[field] = row[field];
  }
  task.aspect_ratio = row.aspect_ratio;
  task.resolution = row.resolution;
  if (row.n !== "" && row.n !== null) task.n = Number(row.n);
  if (row.refs.length) task.reference_images = row.refs.map((r) => r.ref);
  return task;
}

/** The batch-wide backend and model, as chosen above the table (empty: the server's). */
function batchWide() {
  const model = state.model.trim();
  return { ...(state.backend && { backend: state.backend }), ...(model && { model }) };
}

function spec() {
  return { name: state.name.trim() || t("batch.default_name"), defaults: batchWide(), tasks: state.rows.map(taskOf) };
}

// -- rendering -------------------------------------------------------------------------------

const cellId = (row, field) => `r${row.id}-${field}`;
const label = (field, n) => t("batch.cell", { column: t(`batch.col.${field}`), n });

function render() {
  $("rows").replaceChildren(...state.rows.map(rowElement));
  $("batch-name").value = state.name;
  $("batch-model").value = state.model;
  chooseBackend(state.backend);
  lock(state.batchId !== null);
}

function rowElement(row, index) {
  const n = index + 1;
  return el("tr", { dataset: { id: row.id } },
    el("th", { scope: "row", class: "col-num" }, String(n)),
    el("td", { class: "col-prompt" }, text(row, "prompt", n, true)),
    el("td", { class: "col-negative" }, text(row, "negative_prompt", n, true)),
    el("td", {}, choice(row, "aspect_ratio", n, ASPECT_RATIOS)),
    el("td", {}, choice(row, "resolution", n, RESOLUTIONS)),
    el("td", { class: "col-refs" }, references(row, n)),
    el("td", { class: "col-n" }, count(row, n)),
    el("td", { class: "col-prefix" }, text(row, "filename_prefix", n, false)),
    el("td", { class: "col-status", id: `r${row.id}-status` }, status(index, row)),
    el("td", { class: "col-actions" },
      el("button", { type: "button", class: "ghost", "aria-label": t("batch.duplicate_row", { n }), onclick: () => duplicate(row) }, t("batch.duplicate")),
      el("button", { type: "button", class: "ghost danger", "aria-label": t("batch.delete_row", { n }), onclick: () => remove(row) }, t("action.delete")),
    ),
  );
}

/** The cell's control with its problems (aria-invalid, described by the message). */
function withProblems(row, field, control) {
  const found = problems.get(row.id)?.[field];
  const message = el("p", { class: "cell-error", id: `${cellId(row, field)}-error`, hidden: !found }, found ? found.join(" ") : "");
  if (found) {
    if (control.tagName !== "BUTTON") control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", message.id);
  }
  return [control, message];
}

function edited(row, field, value) {
  row[field] = value;
  solved(row, field);
  save();
}

/** The user changed the cell: its problem is no longer shown (the next check says anew). */
function solved(row, field) {
  const found = problems.get(row.id);
  if (found && found[field]) {
    delete found[field];
    const control = $(cellId(row, field));
    control?.removeAttribute("aria-invalid");
    control?.removeAttribute("aria-describedby");
    const message = $(`${cellId(row, field)}-error`);
    if (message) message.hidden = true;
  }
}

function text(row, field, n, long) {
  const attrs = { id: cellId(row, field), "aria-label": label(field, n), value: row[field], maxlength: long ? 20000 : 100, oninput: (e) => edited(row, field, e.target.value) };
  return withProblems(row, field, long ? el("textarea", { ...attrs, rows: 2 }) : el("input", { ...attrs, type: "text", autocomplete: "off" }));
}

function choice(row, field, n, values) {
  const all = values.includes(row[field]) ? values : [...values, row[field]];
  const select = el("select", { id: cellId(row, field), "aria-label": label(field, n), onchange: (e) => edited(row, field, e.target.value) },
    all.map((v) => el("option", { value: v, selected: v === row[field] }, v)));
  return withProblems(row, field, select);
}

function count(row, n) {
  const input = el("input", {
    id: cellId(row, "n"), type: "number", min: 1, max: 10, step: 1, inputmode: "numeric", class: "count",
    "aria-label": label("n", n), value: String(row.n ?? ""),
    oninput: (e) => edited(row, "n", e.target.value === "" ? "" : Number(e.target.value)),
  });
  return withProblems(row, "n", input);
}

function references(row, n) {
  const list = el("ul", { class: "refs" }, row.refs.map((ref, k) => el("li", {},
    el("img", { src: ref.thumb, alt: t("batch.ref_alt", { k: k + 1, name: ref.name }), width: 40, height: 40, loading: "lazy" }),
    el("button", { type: "button", class: "ghost remove-ref", "aria-label": t("batch.remove_ref", { k: k + 1, n }), onclick: () => dropRef(row, k) }, "×"),
  )));
  const pick = el("button", {
    type: "button", id: cellId(row, "reference_images"), class: "pick-refs",
    "aria-label": t("batch.pick_refs", { n, count: row.refs.length, max: MAX_REFS }), onclick: () => pickRefs(row),
  }, t("batch.choose"), el("span", { class: "ref-count" }, ` ${row.refs.length}/${MAX_REFS}`));
  return [list, ...withProblems(row, "reference_images", pick)];
}

function status(index, row) {
  const task = run.tasks.get(index + 1);
  const rowProblems = problems.get(row.id)?.row;
  const out = [];
  if (rowProblems) out.push(el("p", { class: "cell-error", id: `${cellId(row, "row")}-error` }, rowProblems.join(" ")));
  if (!task) return out;
  out.push(badge(task.status));
  if (task.images.length) {
    out.push(el("ul", { class: "results" }, task.images.map((image) => el("li", {},
      el("a", { href: imageUrl(image.id), target: "_blank", rel: "noopener" },
        el("img", { src: thumbUrl(image.id), alt: t("batch.result_alt", { n: index + 1, k: image.index + 1 }), width: 48, height: 48, loading: "lazy" }))))));
  }
  if (task.error) out.push(el("p", { class: "cell-error" }, task.error));
  return out;
}

function refreshStatuses() {
  state.rows.forEach((row, index) => $(`r${row.id}-status`)?.replaceChildren(...status(index, row)));
}

// -- editing ---------------------------------------------------------------------------------

function focusCell(row, field = "prompt") {
  $(cellId(row, field))?.focus();
}

function addRow() {
  const row = blankRow();
  state.rows.push(row);
  save();
  render();
  focusCell(row);
}

function duplicate(row) {
  const copy = blankRow({ ...structuredClone({ ...row, id: undefined }), id: nextId++, key: "" });
  state.rows.splice(state.rows.indexOf(row) + 1, 0, copy);
  save();
  render();
  focusCell(copy);
}

function remove(row) {
  const index = state.rows.indexOf(row);
  state.rows.splice(index, 1);
  problems.delete(row.id);
  if (!state.rows.length) state.rows.push(blankRow());
  save();
  render();
  const next = state.rows[Math.min(index, state.rows.length - 1)];
  focusCell(next);
  toast(t("batch.row_deleted", { n: index + 1 }));
}

function dropRef(row, k) {
  row.refs.splice(k, 1);
  solved(row, "reference_images");
  save();
  render();
  focusCell(row, "reference_images");
}

async function pickRefs(row) {
  const chosen = await openLibrary({ max: MAX_REFS, selected: row.refs });
  if (chosen) {
    row.refs = chosen;
    solved(row, "reference_images");
    save();
    render();
  }
  focusCell(row, "reference_images");
}

async function clearTable() {
  if (!(await confirmDialog(t("batch.clear_confirm"), t("batch.clear")))) return;
  state = fresh();
  problems.clear();
  showProblems([]);
  save();
  render();
}

// -- Excel in and out ------------------------------------------------------------------------

function hasContent() {
  return state.rows.some((row) => row.prompt.trim() || row.refs.length);
}

async function importFile(file) {
  if (hasContent() && !(await confirmDialog(t("batch.replace_confirm", { n: state.rows.length }), t("batch.replace")))) return;
  const body = new FormData();
  body.append("file", file, file.name);
  try {
    const parsed = await api("/tables/parse", { method: "POST", body });
    state = { ...fresh(), name: parsed.name, ...imported(parsed) };
    problems.clear();
    showProblems([]);
    save();
    render();
    toast(t("batch.imported", { n: parsed.rows.length, file: file.name }), "ok");
  } catch (failure) {
    showProblems(listed(failure), t("batch.import_failed", { file: file.name }));
  }
}

/** A parsed file's rows, its defaults folded into each (a row's own value wins): a row shows
 * what its task gets, is sent and is exported. A backend or model all rows share goes up. */
function imported(parsed) {
  const rows = (parsed.rows.length ? parsed.rows : [{}]).map((row) => ({ ...parsed.defaults, ...row }));
  const wide = { backend: "", model: "" };
  for (const field of Object.keys(wide)) {
    const [only, ...others] = new Set(rows.map((row) => row[field]));
    if (!others.length && typeof only === "string") {
      wide[field] = only;
      for (const row of rows) delete row[field];
    }
  }
  return { ...wide, rows: rows.map(rowOf) };
}

/** The row as the sheet gets it: its task, with the batch-wide backend and model it runs on. */
function exportRow(row) {
  const out = { ...batchWide(), ...taskOf(row), n: row.n === "" ? null : row.n };
  for (const field of CELLS) if (!(field in out)) out[field] = null;
  return out;
}

async function exportTable() {
  const name = state.name.trim() || t("batch.default_name");
  try {
    const json = { name, headers: page.lang === "zh" ? "zh" : "en", rows: state.rows.map(exportRow) };
    const response = await api("/tables/export", { method: "POST", json, raw: true });
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `${name}.xlsx`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (failure) {
    showError(failure);
  }
}

// -- problems on their rows ------------------------------------------------------------------

/** Where a problem is: {index, field} of a row's cell ("row" for the row as a whole), or null. */
function placeOf(problem) {
  let match = /^tasks\[(\d+)\](?:\.([A-Za-z_]+))?/.exec(problem.field || "");
  if (match) return { index: Number(match[1]), field: match[2] || "" };
  match = /^task (\d+)$/.exec(problem.where || "");
  if (match) return { index: Number(match[1]) - 1, field: (problem.field || "").split(/[.[]/)[0] };
  return null;
}

function listed(failure) {
  if (failure && failure.problems && failure.problems.length) return failure.problems;
  return [{ where: "", field: "", message: errorText(failure) }];
}

/** Every problem of a failed check or start on its row, and listed above the table. */
function placeProblems(failure) {
  problems.clear();
  const items = [];
  // in table order (row, then column), whatever order the server found them in
  const order = (problem) => {
    const place = placeOf(problem);
    const column = place ? CELLS.indexOf(place.field) : -1;
    return place ? place.index * (CELLS.length + 1) + (column < 0 ? CELLS.length : column) : -1;
  };
  for (const problem of [...listed(failure)].sort((a, b) => order(a) - order(b))) {
    const place = placeOf(problem);
    const row = place && state.rows[place.index];
    if (!row) {
      items.push({ text: problem.where ? `${problem.where}: ${problem.message}` : problem.message });
      continue;
    }
    const field = CELLS.includes(place.field) ? place.field : "row";
    const found = problems.get(row.id) || {};
    (found[field] ||= []).push(field === "row" && place.field ? `${place.field}: ${problem.message}` : problem.message);
    problems.set(row.id, found);
    items.push({ row, field, text: `${t("batch.row", { n: place.index + 1 })}, ${field === "row" ? place.field || "—" : t(`batch.col.${field}`)}: ${problem.message}` });
  }
  render();
  showProblems(items, t("batch.problems", { n: items.length }));
  const first = items.find((item) => item.row && item.field !== "row");
  if (first) focusCell(first.row, first.field);
}

function showProblems(items, title = "") {
  $("problems").hidden = !items.length;
  $("problems-title").textContent = title;
  $("problems-list").replaceChildren(...items.map((item) => {
    const text = typeof item === "string" ? item : item.text || (item.where ? `${item.where}${item.field ? `, ${item.field}` : ""}: ${item.message}` : item.message);
    if (item.row && item.field !== "row") {
      return el("li", {}, el("button", { type: "button", class: "linkish", onclick: () => focusCell(item.row, item.field) }, text));
    }
    return el("li", {}, text);
  }));
}

// -- check, start, follow --------------------------------------------------------------------

async function check() {
  $("plan").textContent = "";
  try {
    const plan = await api("/batches", { method: "POST", json: spec(), query: { dry_run: true } });
    problems.clear();
    showProblems([]);
    render();
    $("plan").textContent = t("batch.plan", plan);
    return true;
  } catch (failure) {
    if (failure.status === 422) placeProblems(failure);
    else showProblems(listed(failure), t("batch.cannot_start"));
    return false;
  }
}

async function start() {
  $("start-button").disabled = true;
  $("plan").textContent = "";
  try {
    const batch = await api("/batches", { method: "POST", json: spec() });
    problems.clear();
    showProblems([]);
    state.batchId = batch.id;
    saveNow();
    watch(batch.id);
  } catch (failure) {
    if (failure.status === 422) placeProblems(failure);
    else showProblems(listed(failure), t("batch.cannot_start"));
  } finally {
    $("start-button").disabled = state.batchId !== null;
  }
}

/** While a batch runs from this table, its rows cannot change (Export still works). */
function lock(locked) {
  for (const control of document.querySelectorAll("#rows button, #rows input, #rows select, #rows textarea")) control.disabled = locked;
  for (const id of ["add-row", "import-button", "clear-table", "check-button", "start-button", "batch-name", "batch-backend", "batch-model"]) $(id).disabled = locked;
  $("batch-table").classList.toggle("locked", locked);
}

function watch(batchId) {
  run.stop?.();
  run.tasks.clear();
  lock(true);
  run.stop = followRun(batchId, {
    onTasks: (tasks) => { run.tasks = tasks; refreshStatuses(); },
    onGone: () => { state.batchId = null; saveNow(); lock(false); },
  });
}

function editAgain() {
  run.stop?.();
  run.tasks.clear();
  state.batchId = null;
  saveNow();
  $("run").hidden = true;
  render();
  focusCell(state.rows[0]);
}

// -- the batch-wide settings -----------------------------------------------------------------

function chooseBackend(name) {
  const select = $("batch-backend");
  if (name && ![...select.options].some((o) => o.value === name)) select.append(el("option", { value: name }, name));
  select.value = name || "";
}

async function loadBackends() {
  try {
    const backends = await api("/backends");
    const select = $("batch-backend");
    select.append(...backends.map((b) => el("option", { value: b.name },
      t("batch.backend_option", { name: b.name, model: b.model || "—", credits: b.credits_per_image }))));
    chooseBackend(state.backend);
  } catch (failure) {
    showError(failure);
  }
}

// -- wiring ----------------------------------------------------------------------------------

$("batch-name").addEventListener("input", (e) => { state.name = e.target.value; save(); });
$("batch-model").addEventListener("input", (e) => { state.model = e.target.value; save(); });
$("batch-backend").addEventListener("change", (e) => { state.backend = e.target.value; save(); });
$("add-row").addEventListener("click", addRow);
$("clear-table").addEventListener("click", clearTable);
$("import-button").addEventListener("click", () => $("import-file").click());
$("import-file").addEventListener("change", (e) => {
  const [file] = e.target.files;
  e.target.value = "";
  if (file) importFile(file);
});
$("export-button").addEventListener("click", exportTable);
$("check-button").addEventListener("click", check);
$("start-button").addEventListener("click", start);
$("edit-again").addEventListener("click", editAgain);

render();
loadBackends();
if (state.batchId !== null) watch(state.batchId);
