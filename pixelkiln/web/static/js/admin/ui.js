// What the Admin page's sections share: the hash, form errors, figures, numbers, users.
import { api, el, errorText, page, t } from "../kiln.js";

/** The section and parameters of the hash: "#batches?status=failed" → {name, params}. */
export function readHash() {
  const [name, query = ""] = location.hash.slice(1).split("?");
  return { name, params: new URLSearchParams(query) };
}

/**
 * Go to `section` with `params` (empty values left out). When the hash would not change
 * (the same search again), `again` runs instead: no hashchange would fire.
 */
export function goTo(section, params, again) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  const hash = `#${section}${text ? `?${text}` : ""}`;
  if (hash === location.hash) again();
  else location.hash = hash;
}

/** Show `error` (an ApiFailure or a string) in the form's alert; mark `field` invalid. */
export function formError(box, error, field) {
  box.textContent = typeof error === "string" ? error : errorText(error);
  box.hidden = false;
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

/** Hide the form's alert and clear every field's invalid mark. */
export function clearError(box, form) {
  box.hidden = true;
  box.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

const numbers = new Intl.NumberFormat(page.lang === "zh" ? "zh-CN" : "en");
/** A count for people: 12,345 (or 12,345 in Chinese too). */
export const count = (n) => (n === null || n === undefined ? "—" : numbers.format(n));

/** Fill a <dl> with [label, value] pairs (values are text or nodes). */
export function figures(dl, pairs) {
  dl.replaceChildren(
    ...pairs.map(([label, value]) => el("div", { class: "figure" }, el("dt", {}, label), el("dd", {}, value))),
  );
}

/** "{action}: {name}": a row's button says whom it acts on, starting with what it shows. */
export const actionFor = (action, name) => t("admin.action_for", { action, name });

let users = null;
/** Every user (id, name, …), fetched once and again after `forgetUsers`. */
export async function allUsers() {
  users ??= api("/admin/users").catch((error) => {
    users = null;
    throw error;
  });
  return users;
}

/** The user list changed (a user added, disabled, credited): fetch it again next time. */
export function forgetUsers() {
  users = null;
}

/** A number from an <input type=number>, or null when it is empty or not an integer. */
export function integer(input) {
  const text = input.value.trim();
  return /^-?\d+$/.test(text) ? Number(text) : null;
}
