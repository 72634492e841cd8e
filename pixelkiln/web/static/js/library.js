// The reference library: pick up to N reference images from my uploads and my past results.
//
//   import { openLibrary } from "./library.js";
//   const picked = await openLibrary({ max: 4, selected: ["asset:12"] });
//   // → [{ref: "asset:12", assetId: 12, name: "fox.png", thumb: "/api/v1/assets/12/thumbnail"}, …]
//   //   or null when cancelled
//
// A batch spec takes inputs only as "asset:<id>", so a past result picked here is made an
// upload of mine first (POST /api/v1/assets/from-image; the same image twice is one asset).
// Its messages are messages/library.json: a page that imports this lists "library" in its
// `uses` (pixelkiln/web/pages.py). Everything is the public /api/v1.
import { api, assetThumbUrl, el, errorText, t, thumbUrl } from "./kiln.js";

const PAGE_SIZE = 48;

// the library's stylesheet, once per page, from beside this script (no page template needed)
if (!document.querySelector("link[data-library-css]")) {
  document.head.append(el("link", {
    rel: "stylesheet", href: new URL("../css/library.css", import.meta.url).href, dataset: { libraryCss: "" },
  }));
}

/** An item the caller gets back. */
function picked(assetId, name) {
  return { ref: `asset:${assetId}`, assetId, name, thumb: assetThumbUrl(assetId) };
}

/** "asset:12" or {ref: "asset:12", …} → the selection key and what is known of it. */
function preselected(entry) {
  const ref = typeof entry === "string" ? entry : entry && entry.ref;
  const id = Number(String(ref || "").replace(/^asset:/, ""));
  if (!Number.isInteger(id) || id < 1) return null;
  const name = (typeof entry === "object" && entry.name) || `asset ${id}`;
  return [`asset:${id}`, { kind: "asset", id, name }];
}

/**
 * Open the library. `max`: how many may be chosen; `selected`: refs (or items) chosen already.
 * Resolves to the chosen items in the order they were chosen, or null when cancelled.
 */
export function openLibrary({ max = 4, selected = [] } = {}) {
  const chosen = new Map(selected.map(preselected).filter(Boolean).slice(0, max));
  const ui = build(max);
  const state = { ui, chosen, max, tabs: {} };
  ui.dialog.addEventListener("change", (event) => onToggle(state, event.target));
  ui.upload.addEventListener("change", () => upload(state));
  for (const [name, tab] of Object.entries(ui.tabs)) {
    tab.addEventListener("click", () => showTab(state, name));
    tab.addEventListener("keydown", (event) => tabKeys(state, name, event));
    state.tabs[name] = { loaded: false, next: null };
  }
  document.body.append(ui.dialog);
  ui.dialog.showModal();
  showTab(state, "uploads");
  updateCount(state);
  return new Promise((resolve) => {
    ui.use.addEventListener("click", async () => {
      ui.use.disabled = true;
      try {
        const result = await finish(state);
        ui.dialog.close("ok");
        resolve(result);
      } catch (error) {
        say(state, errorText(error));
        ui.use.disabled = false;
      }
    });
    ui.cancel.addEventListener("click", () => ui.dialog.close("cancel"));
    ui.dialog.addEventListener("close", () => {
      ui.dialog.remove();
      if (ui.dialog.returnValue !== "ok") resolve(null);
    }, { once: true });
  });
}

function build(max) {
  const tabs = {
    uploads: el("button", { type: "button", role: "tab", id: "lib-tab-uploads", "aria-controls": "lib-panel-uploads" }, t("library.tab_uploads")),
    results: el("button", { type: "button", role: "tab", id: "lib-tab-results", "aria-controls": "lib-panel-results" }, t("library.tab_results")),
  };
  const panels = {
    uploads: el("div", { role: "tabpanel", id: "lib-panel-uploads", "aria-labelledby": "lib-tab-uploads", class: "lib-panel" }),
    results: el("div", { role: "tabpanel", id: "lib-panel-results", "aria-labelledby": "lib-tab-results", class: "lib-panel" }),
  };
  const upload = el("input", { type: "file", id: "lib-upload", accept: "image/png,image/jpeg,image/gif,image/webp", multiple: true, hidden: true, "aria-label": t("library.upload") });
  const count = el("p", { class: "lib-count", id: "lib-count", "aria-live": "polite" });
  const error = el("p", { class: "error lib-error", role: "alert", hidden: true });
  const use = el("button", { type: "button", class: "primary", id: "lib-use" }, t("library.use"));
  const cancel = el("button", { type: "button", class: "ghost", id: "lib-cancel" }, t("action.cancel"));
  const dialog = el("dialog", { class: "wide library", "aria-labelledby": "lib-title", "aria-describedby": "lib-hint" },
    el("div", { class: "lib-head" },
      el("h2", { id: "lib-title" }, t("library.title")),
      el("p", { class: "hint", id: "lib-hint" }, t("library.hint", { max })),
    ),
    el("div", { class: "lib-bar" },
      el("div", { role: "tablist", class: "lib-tabs", "aria-label": t("library.title") }, tabs.uploads, tabs.results),
      upload,
      el("button", { type: "button", class: "lib-upload-button", onclick: () => upload.click() }, t("library.upload")),
    ),
    error, panels.uploads, panels.results,
    el("div", { class: "actions lib-foot" }, count, cancel, use),
  );
  return { dialog, tabs, panels, upload, count, error, use, cancel };
}

function say(state, message) {
  state.ui.error.textContent = message || "";
  state.ui.error.hidden = !message;
}

function showTab(state, name) {
  for (const [other, tab] of Object.entries(state.ui.tabs)) {
    const on = other === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    state.ui.panels[other].hidden = !on;
  }
  if (!state.tabs[name].loaded) loadMore(state, name);
}

/** Arrow keys, Home and End move between the tabs (the ARIA tabs pattern). */
function tabKeys(state, name, event) {
  const names = Object.keys(state.ui.tabs);
  const i = names.indexOf(name);
  const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: names.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  const next = names[(to + names.length) % names.length];
  showTab(state, next);
  state.ui.tabs[next].focus();
}

async function loadMore(state, name) {
  const tab = state.tabs[name];
  const panel = state.ui.panels[name];
  tab.loaded = true;
  panel.querySelector(".lib-more")?.remove();
  panel.setAttribute("aria-busy", "true");
  try {
    const { tiles, next } = name === "uploads" ? await uploadsPage(state, tab.next) : await resultsPage(state, tab.next);
    tab.next = next;
    let grid = panel.querySelector(".lib-grid");
    if (!grid) panel.append(grid = el("div", { class: "lib-grid", onkeydown: (e) => gridKeys(e) }));
    grid.append(...tiles);
    if (!grid.children.length) panel.prepend(el("p", { class: "hint" }, t(`library.empty_${name}`)));
    if (next !== null && next !== undefined) {
      panel.append(el("button", { type: "button", class: "ghost lib-more", onclick: () => loadMore(state, name) }, t("library.more")));
    }
    updateCount(state);
  } catch (error) {
    tab.loaded = false;
    say(state, errorText(error));
  } finally {
    panel.removeAttribute("aria-busy");
  }
}

async function uploadsPage(state, offset) {
  const page = await api("/assets", { query: { limit: PAGE_SIZE, offset: offset || 0 } });
  return { tiles: page.items.map((a) => assetTile(state, a)), next: page.next_offset };
}

async function resultsPage(state, before) {
  const page = await api("/images", { query: { limit: PAGE_SIZE, before, count: false } });
  return { tiles: page.items.map((i) => imageTile(state, i)), next: page.next_cursor };
}

function assetTile(state, asset) {
  const key = `asset:${asset.id}`;
  const known = state.chosen.get(key);
  if (known) known.name = asset.name;  // a preselected ref learns its real name
  return tile(state, key, { kind: "asset", id: asset.id, name: asset.name }, assetThumbUrl(asset.id), asset.name);
}

function imageTile(state, image) {
  const label = image.prompt || `#${image.id}`;
  return tile(state, `image:${image.id}`, { kind: "image", id: image.id, name: label }, thumbUrl(image.id), label);
}

function tile(state, key, item, src, label) {
  const box = el("input", { type: "checkbox", class: "lib-check", value: key, checked: state.chosen.has(key), dataset: { key } });
  box._item = item;
  return el("label", { class: "lib-tile", title: label },
    box,
    el("img", { src, alt: "", loading: "lazy", width: 128, height: 128 }),
    el("span", { class: "lib-name" }, label),
  );
}

function onToggle(state, box) {
  if (!box.classList?.contains("lib-check")) return;
  const key = box.dataset.key;
  if (box.checked) {
    if (state.chosen.size >= state.max && !state.chosen.has(key)) {
      box.checked = false;
      say(state, t("library.full", { max: state.max }));
      return;
    }
    state.chosen.set(key, box._item);
  } else {
    state.chosen.delete(key);
  }
  say(state, "");
  // the same picture in the other tab (an upload listed again) follows
  for (const other of state.ui.dialog.querySelectorAll(".lib-check")) {
    if (other !== box && other.dataset.key === key) other.checked = box.checked;
  }
  updateCount(state);
}

/** "2 of 4 chosen"; once full, the other tiles are disabled (said by the count). */
function updateCount(state) {
  const full = state.chosen.size >= state.max;
  state.ui.count.textContent = t("library.count", { n: state.chosen.size, max: state.max });
  for (const box of state.ui.dialog.querySelectorAll(".lib-check")) {
    box.disabled = full && !box.checked;
  }
}

/** Arrow keys move between tiles: left/right in order, up/down to the tile above or below. */
function gridKeys(event) {
  const boxes = [...event.currentTarget.querySelectorAll(".lib-check:not(:disabled)")];
  const i = boxes.indexOf(event.target);
  if (i < 0) return;
  let to = null;
  if (event.key === "ArrowRight") to = boxes[i + 1];
  else if (event.key === "ArrowLeft") to = boxes[i - 1];
  else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const here = event.target.closest(".lib-tile").getBoundingClientRect();
    const down = event.key === "ArrowDown";
    const row = boxes.filter((b) => {
      const r = b.closest(".lib-tile").getBoundingClientRect();
      return down ? r.top > here.top + 1 : r.bottom < here.bottom - 1;
    });
    to = row.sort((a, b) => distance(a, here, down) - distance(b, here, down))[0];
  }
  if (!to) return;
  event.preventDefault();
  to.focus();
}

function distance(box, here, down) {
  const r = box.closest(".lib-tile").getBoundingClientRect();
  return Math.abs(down ? r.top - here.top : here.top - r.top) * 10 + Math.abs(r.left - here.left);
}

async function upload(state) {
  const files = [...state.ui.upload.files];
  state.ui.upload.value = "";
  if (!files.length) return;
  const body = new FormData();
  for (const file of files) body.append("files", file, file.name);
  say(state, "");
  state.ui.count.textContent = t("library.uploading", { n: files.length });
  try {
    const assets = await api("/assets", { method: "POST", body });
    showTab(state, "uploads");
    const panel = state.ui.panels.uploads;
    panel.querySelector(":scope > .hint")?.remove();
    let grid = panel.querySelector(".lib-grid");
    if (!grid) panel.prepend(grid = el("div", { class: "lib-grid", onkeydown: (e) => gridKeys(e) }));
    for (const asset of [...assets].reverse()) {
      const key = `asset:${asset.id}`;
      grid.querySelector(`.lib-check[data-key="${key}"]`)?.closest(".lib-tile")?.remove();
      grid.prepend(assetTile(state, asset));
      if (state.chosen.size < state.max) state.chosen.set(key, { kind: "asset", id: asset.id, name: asset.name });
    }
    for (const box of grid.querySelectorAll(".lib-check")) box.checked = state.chosen.has(box.dataset.key);
    grid.querySelector(".lib-check")?.focus();
  } catch (error) {
    say(state, errorText(error));
  }
  updateCount(state);
}

/** The chosen items as uploads, in the order chosen: past results are made uploads now. */
async function finish(state) {
  const out = [];
  for (const item of state.chosen.values()) {
    if (item.kind === "asset") {
      out.push(picked(item.id, item.name));
    } else {
      const asset = await api("/assets/from-image", { method: "POST", json: { image_id: item.id } });
      out.push(picked(asset.id, asset.name));
    }
  }
  // two results of the same bytes are one asset: each once
  const seen = new Set();
  return out.filter((item) => !seen.has(item.ref) && seen.add(item.ref));
}
