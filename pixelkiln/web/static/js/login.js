// /login: paste a token once; the API answers with an HttpOnly session cookie.
import { api, errorText } from "./kiln.js";

const form = document.getElementById("login-form");
const input = document.getElementById("token");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  input.removeAttribute("aria-invalid");
  try {
    await api("/session", { method: "POST", json: { token: input.value.trim() } });
    location.assign(form.dataset.next || "/");
  } catch (failure) {
    error.textContent = errorText(failure);
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
});
input.focus();
