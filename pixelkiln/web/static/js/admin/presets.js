// Admin → Presets: list (inactive ones too), create, edit, delete, activate, and order
// within a category by dragging a row or with its ↑ ↓ buttons (POST /presets/reorder).
import { api, confirmDialog, el, showError, t, toast } from "../kiln.js";
import { actionFor, clearError, formError } from "./ui.js";

const rows = document.querySelector("#presets-table tbody");
const empty = document.getElementById("presets-empty");
const live = document.getElementById("presets-live");
const dialog = document.getElementById("preset-dialog");
const form = document.getElementById("preset-form");
const heading = document.getElementById("preset-dialog-title");
const error = document.getElementById("preset-error");
const categories = document.getElementById("preset-categories");
const field = (name) => form.elements.namedItem(name);

let presets = []; // in the order users see them: by category, then position
let editing = null; // the preset in the dialog; null for a new one
let dragged = null; // id of the row being dragged

function render() {
  rows.replaceChildren(...presets.map(row));
  empty.hidden = presets.length > 0;
  const names = [...new Set(presets.map((p) => p.category).filter(Boolean))];
  categories.replaceChildren(...names.map((name) => el("option", { value: name })));
}

function row(p, i) {
  const up = i > 0 && presets[i - 1].category === p.category;
  const down = i < presets.length - 1 && presets[i + 1].category === p.category;
  const active = el("input", {
    type: "checkbox",
    checked: p.active,
    "aria-label": actionFor(t("preset.active"), p.title),
    onchange: (event) => setActive(p, event.currentTarget),
  });
  return el(
    "tr",
    { draggable: "true", class: p.active ? null : "inactive", dataset: { id: p.id } },
    el(
      "td",
      { class: "order" },
      el("span", { class: "grip", "aria-hidden": "true", title: t("preset.drag") }, "⠿"),
      el("span", { class: "pos" }, p.position),
      el("button", { type: "button", class: "ghost icon", disabled: !up, "aria-label": actionFor(t("preset.up"), p.title), onclick: () => move(p.id, -1) }, "↑"),
      el("button", { type: "button", class: "ghost icon", disabled: !down, "aria-label": actionFor(t("preset.down"), p.title), onclick: () => move(p.id, +1) }, "↓"),
    ),
    el("th", { scope: "row" }, p.title),
    el("td", {}, p.category || el("span", { class: "hint" }, t("preset.no_category"))),
    el("td", { class: "clip", title: p.content }, p.content),
    el("td", {}, active),
    el(
      "td",
      {},
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", onclick: () => open(p), "aria-label": actionFor(t("preset.edit"), p.title) }, t("preset.edit")),
        el("button", { type: "button", class: "danger", onclick: () => remove(p), "aria-label": actionFor(t("action.delete"), p.title) }, t("action.delete")),
      ),
    ),
  );
}

/** Save the order shown (every preset, so positions stay unique) and show the answer. */
async function saveOrder(movedId) {
  try {
    presets = await api("/presets/reorder", { method: "POST", json: { ids: presets.map((p) => p.id) } });
  } catch (failure) {
    showError(failure);
    await load();
    return;
  }
  render();
  const moved = presets.find((p) => p.id === movedId);
  if (moved) live.textContent = t("preset.moved", { title: moved.title, position: moved.position });
}

/** One place up (-1) or down (+1) within its category, keeping focus on the same button. */
async function move(id, step) {
  const from = presets.findIndex((p) => p.id === id);
  const to = from + step;
  if (to < 0 || to >= presets.length || presets[to].category !== presets[from].category) return;
  const [item] = presets.splice(from, 1);
  presets.splice(to, 0, item);
  render();
  await saveOrder(id);
  const buttons = rows.querySelectorAll(`tr[data-id="${id}"] td.order button`);
  const again = buttons[step < 0 ? 0 : 1];
  (again && !again.disabled ? again : buttons[step < 0 ? 1 : 0])?.focus();
}

// drag and drop, within a category (the list is ordered by category first)
rows.addEventListener("dragstart", (event) => {
  const tr = event.target.closest?.("tr");
  if (!tr) return;
  dragged = Number(tr.dataset.id);
  event.dataTransfer.effectAllowed = "move";
  event.dataTransfer.setData("text/plain", String(dragged));
  tr.classList.add("dragging");
});
rows.addEventListener("dragover", (event) => {
  const target = dropTarget(event);
  if (!target) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "move";
  for (const tr of rows.querySelectorAll(".drop-before, .drop-after")) tr.classList.remove("drop-before", "drop-after");
  target.tr.classList.add(target.after ? "drop-after" : "drop-before");
});
rows.addEventListener("drop", async (event) => {
  const target = dropTarget(event);
  if (!target) return;
  event.preventDefault();
  const id = dragged;
  const from = presets.findIndex((p) => p.id === id);
  const [item] = presets.splice(from, 1);
  let to = presets.findIndex((p) => p.id === Number(target.tr.dataset.id));
  if (target.after) to += 1;
  presets.splice(to, 0, item);
  endDrag();
  render();
  await saveOrder(id);
});
rows.addEventListener("dragend", endDrag);

function dropTarget(event) {
  const tr = event.target.closest?.("tr");
  if (dragged === null || !tr || Number(tr.dataset.id) === dragged) return null;
  const source = presets.find((p) => p.id === dragged);
  const over = presets.find((p) => p.id === Number(tr.dataset.id));
  if (!source || !over || source.category !== over.category) return null;
  const box = tr.getBoundingClientRect();
  return { tr, after: event.clientY > box.top + box.height / 2 };
}

function endDrag() {
  dragged = null;
  for (const tr of rows.querySelectorAll(".dragging, .drop-before, .drop-after")) {
    tr.classList.remove("dragging", "drop-before", "drop-after");
  }
}

async function setActive(p, box) {
  try {
    const changed = await api(`/presets/${p.id}`, { method: "PATCH", json: { active: box.checked } });
    Object.assign(p, changed);
    box.closest("tr").classList.toggle("inactive", !changed.active);
    toast(t(changed.active ? "preset.activated" : "preset.deactivated", { title: p.title }), "ok");
  } catch (failure) {
    box.checked = !box.checked;
    showError(failure);
  }
}

async function remove(p) {
  if (!(await confirmDialog(t("preset.confirm_delete", { title: p.title }), t("action.delete")))) return;
  try {
    await api(`/presets/${p.id}`, { method: "DELETE" });
    await load();
    document.getElementById("preset-new").focus();
    toast(t("preset.deleted", { title: p.title }), "ok");
  } catch (failure) {
    showError(failure);
  }
}

/** The dialog, for `p` or (null) a new preset. */
function open(p) {
  editing = p;
  clearError(error, form);
  heading.textContent = p ? t("preset.edit_title", { title: p.title }) : t("preset.new");
  field("title").value = p?.title ?? "";
  field("category").value = p?.category ?? "";
  field("position").value = p ? String(p.position) : "";
  field("content").value = p?.content ?? "";
  field("negative_prompt").value = p?.negative_prompt ?? "";
  field("params").value = p && Object.keys(p.params).length ? JSON.stringify(p.params, null, 2) : "";
  field("active").checked = p ? p.active : true;
  dialog.showModal();
  field("title").focus();
}

/** The body the form describes, or null after showing what is wrong. */
function body() {
  const title = field("title").value.trim();
  const content = field("content").value.trim();
  if (!title) return formError(error, t("preset.need_title"), field("title")), null;
  if (!content) return formError(error, t("preset.need_content"), field("content")), null;
  let params = {};
  const text = field("params").value.trim();
  if (text) {
    try {
      params = JSON.parse(text);
    } catch {
      params = null;
    }
    if (!params || typeof params !== "object" || Array.isArray(params)) {
      return formError(error, t("preset.bad_params"), field("params")), null;
    }
  }
  const out = {
    title,
    content,
    category: field("category").value.trim(),
    negative_prompt: field("negative_prompt").value.trim(),
    params,
    active: field("active").checked,
  };
  const position = field("position").value.trim();
  if (position) {
    if (!/^\d+$/.test(position)) return formError(error, t("preset.bad_position"), field("position")), null;
    out.position = Number(position);
  }
  return out;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error, form);
  const json = body();
  if (!json) return;
  try {
    const saved = editing
      ? await api(`/presets/${editing.id}`, { method: "PATCH", json })
      : await api("/presets", { method: "POST", json });
    dialog.close();
    await load(); // the list first, then the word that it is done
    rows.querySelector(`tr[data-id="${saved.id}"] td:last-child button`)?.focus();
    toast(t(editing ? "preset.saved" : "preset.created", { title: saved.title }), "ok");
  } catch (failure) {
    const where = failure.field ? failure.field.split(".")[0] : null;
    formError(error, failure, where && field(where) instanceof HTMLElement ? field(where) : null);
  }
});

document.getElementById("preset-new").addEventListener("click", () => open(null));

async function load() {
  try {
    presets = await api("/presets", { query: { include_inactive: true } });
    render();
  } catch (failure) {
    showError(failure);
  }
}

export default { show: load };
