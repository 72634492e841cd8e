// /login: paste a token once; the API answers with an HttpOnly session cookie.
import { api, errorText, t } from "./kiln.js";

const form = document.getElementById("login-form");
const input = document.getElementById("token");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  input.removeAttribute("aria-invalid");
  const token = input.value.trim();
  if (!token) return refuse(t("login.empty")); // the API's 422 would be in English only
  try {
    await api("/session", { method: "POST", json: { token } });
    location.assign(form.dataset.next || "/");
  } catch (failure) {
    refuse(errorText(failure));
  }
});

function refuse(message) {
  error.textContent = message;
  error.hidden = false;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}
input.focus();
