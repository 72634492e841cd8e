// Admin → Users and credits: add a user (the token is shown once, with a copy button),
// enable or disable, grant or take back credits with a note, revoke every token of a
// user (a leaked one) and issue a new one.
import { api, confirmDialog, el, page, showError, t, toast, when } from "../kiln.js";
import { actionFor, clearError, count, forgetUsers, formError, integer } from "./ui.js";

const rows = document.querySelector("#users-table tbody");
const addForm = document.getElementById("user-form");
const addError = document.getElementById("user-error");
const creditsDialog = document.getElementById("credits-dialog");
const creditsForm = document.getElementById("credits-form");
const creditsError = document.getElementById("credits-error");
const tokenDialog = document.getElementById("token-dialog");
const tokenValue = document.getElementById("token-value");
const tokenCopied = document.getElementById("token-copied");

let crediting = null; // the user in the credits dialog
let returnFocus = null; // where focus goes when the token dialog closes

function row(u) {
  const me = page.user && page.user.id === u.id;
  const act = (label, onclick, kind) =>
    el("button", { type: "button", class: kind, onclick, "aria-label": actionFor(label, u.name) }, label);
  return el(
    "tr",
    { dataset: { user: u.name } },
    el("th", { scope: "row" }, u.name, me ? el("span", { class: "tag" }, t("user.you")) : null),
    el("td", {}, t(u.is_admin ? "user.role_admin" : "user.role_user")),
    el("td", {}, el("span", { class: `badge ${u.active ? "st-succeeded" : "st-failed"}` }, t(u.active ? "user.enabled" : "user.disabled"))),
    el("td", { class: "num" }, count(u.balance)),
    el("td", {}, when(u.created_at)),
    el(
      "td",
      {},
      el(
        "div",
        { class: "actions" },
        me ? null : act(t(u.active ? "user.disable" : "user.enable"), () => setActive(u, !u.active)),
        act(t("user.credits_button"), () => openCredits(u)),
        act(t("user.new_token"), (event) => newToken(u, event.currentTarget)),
        act(t("user.revoke"), () => revoke(u, me), "danger"),
      ),
    ),
  );
}

async function load() {
  try {
    const users = await api("/admin/users");
    rows.replaceChildren(...users.map(row));
  } catch (failure) {
    showError(failure);
  }
}

/** Reload the list and put focus back on the same button of the same user. */
async function reloadKeeping(name, label) {
  forgetUsers();
  await load();
  const tr = rows.querySelector(`tr[data-user="${CSS.escape(name)}"]`);
  const button = [...(tr?.querySelectorAll("button") || [])].find((b) => b.textContent === label);
  (button || tr?.querySelector("button"))?.focus();
}

async function setActive(u, active) {
  try {
    await api(`/admin/users/${u.id}`, { method: "PATCH", json: { active } });
    await reloadKeeping(u.name, t(active ? "user.disable" : "user.enable"));
    toast(t(active ? "user.enabled_toast" : "user.disabled_toast", { name: u.name }), "ok");
  } catch (failure) {
    showError(failure);
  }
}

async function revoke(u, me) {
  const text = t(me ? "user.confirm_revoke_self" : "user.confirm_revoke", { name: u.name });
  if (!(await confirmDialog(text, t("user.revoke")))) return;
  try {
    await api(`/admin/users/${u.id}/tokens`, { method: "DELETE" });
    toast(t("user.revoked", { name: u.name }), "ok");
    if (me) location.assign("/login"); // this session went with the token
  } catch (failure) {
    showError(failure);
  }
}

async function newToken(u, button) {
  try {
    const made = await api(`/admin/users/${u.id}/tokens`, { method: "POST", query: { label: "web" } });
    showToken(made, button);
  } catch (failure) {
    showError(failure);
  }
}

/** The token of `made` (a UserCreated) in its dialog: shown this once. */
function showToken(made, from) {
  returnFocus = from;
  document.getElementById("token-dialog-title").textContent = t("token.title", { name: made.name });
  tokenValue.value = made.token;
  tokenCopied.textContent = "";
  tokenDialog.showModal();
  tokenValue.select();
}

tokenDialog.addEventListener("close", () => {
  tokenValue.value = ""; // not kept in the page once closed
  returnFocus?.focus();
});

document.getElementById("token-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(tokenValue.value);
  } catch {
    tokenValue.select(); // no clipboard permission: select it for Ctrl+C, and try the old way
    document.execCommand?.("copy");
  }
  tokenCopied.textContent = t("token.copied");
});

function openCredits(u) {
  crediting = u;
  clearError(creditsError, creditsForm);
  document.getElementById("credits-dialog-title").textContent = t("credits.title", { name: u.name });
  document.getElementById("credits-balance").textContent = t("credits.balance_now", { balance: count(u.balance) });
  creditsForm.elements.namedItem("amount").value = "";
  creditsForm.elements.namedItem("note").value = "";
  creditsDialog.showModal();
  creditsForm.elements.namedItem("amount").focus();
}

creditsForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(creditsError, creditsForm);
  const amountField = creditsForm.elements.namedItem("amount");
  const amount = integer(amountField);
  if (amount === null || amount === 0) {
    formError(creditsError, t("credits.need_amount"), amountField);
    return;
  }
  const note = creditsForm.elements.namedItem("note").value.trim();
  try {
    const answer = await api(`/admin/users/${crediting.id}/credits`, { method: "POST", json: { amount, note } });
    creditsDialog.close();
    const name = crediting.name;
    await reloadKeeping(name, t("user.credits_button"));
    toast(t("credits.done", { name, balance: count(answer.balance) }), "ok");
  } catch (failure) {
    formError(creditsError, failure, amountField);
  }
});

addForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(addError, addForm);
  const name = addForm.elements.namedItem("name");
  const creditsField = addForm.elements.namedItem("credits");
  if (!name.value.trim()) {
    formError(addError, t("user.need_name"), name);
    return;
  }
  const credits = creditsField.value.trim() === "" ? 0 : integer(creditsField);
  if (credits === null || credits < 0) {
    formError(addError, t("user.bad_credits"), creditsField);
    return;
  }
  const json = { name: name.value.trim(), credits, is_admin: addForm.elements.namedItem("is_admin").checked };
  try {
    const made = await api("/admin/users", { method: "POST", json });
    addForm.reset();
    forgetUsers();
    await load();
    showToken(made, name);
  } catch (failure) {
    formError(addError, failure, failure.field === "credits" ? creditsField : name);
  }
});

export default { show: load };
