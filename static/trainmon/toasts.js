// Toasts: bottom-right, one per event, dismissed after a few seconds.
// Sources: `HX-Trigger: {"toast": {"message": "...", "level": "info|success|warning|error"}}` on
// any htmx response, Django messages rendered into #toasts on a full page load, failed htmx
// requests, and window.trainmon.toast(message, level) for scripts that use fetch().
(function () {
  "use strict";

  const LEVELS = ["info", "success", "warning", "error"];
  const DISMISS_MS = { info: 5000, success: 5000, warning: 8000, error: 10000 };
  const LEAVE_MS = 200;
  const MAX_VISIBLE = 4;

  function region() {
    return document.getElementById("toasts");
  }

  function dismiss(toast) {
    if (toast.classList.contains("leaving")) return;
    toast.classList.add("leaving");
    window.setTimeout(() => toast.remove(), LEAVE_MS);
  }

  // Adds the close button and the timer; the timer waits while the pointer is on the toast.
  function arm(toast) {
    const level = LEVELS.includes(toast.dataset.level) ? toast.dataset.level : "info";
    toast.dataset.level = level;
    if (!toast.querySelector(".toast-message")) {
      const message = document.createElement("span");
      message.className = "toast-message";
      message.append(...toast.childNodes);
      toast.append(message);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => dismiss(toast));
    toast.append(close);

    let timer = null;
    const start = () => {
      timer = window.setTimeout(() => dismiss(toast), DISMISS_MS[level]);
    };
    toast.addEventListener("mouseenter", () => window.clearTimeout(timer));
    toast.addEventListener("mouseleave", start);
    start();
  }

  function show(message, level) {
    const box = region();
    if (!box || !message) return;
    const text = String(message);
    // The same news twice in a row (a retry, a second tab's echo) is one toast.
    for (const existing of box.querySelectorAll(".toast:not(.leaving) .toast-message")) {
      if (existing.textContent === text) return;
    }
    const toast = document.createElement("div");
    toast.className = "toast";
    toast.dataset.level = level || "info";
    const body = document.createElement("span");
    body.className = "toast-message";
    body.textContent = text;
    toast.append(body);
    box.append(toast);
    arm(toast);
    const live = box.querySelectorAll(".toast:not(.leaving)");
    for (let i = 0; i < live.length - MAX_VISIBLE; i++) dismiss(live[i]);
  }

  window.trainmon = window.trainmon || {};
  window.trainmon.toast = show;

  document.addEventListener("toast", (event) => {
    const detail = event.detail || {};
    show(detail.message ?? detail.value, detail.level);
  });

  document.addEventListener("htmx:responseError", (event) => {
    const xhr = event.detail.xhr;
    // A response that explains itself with a toast needs no second one.
    if (xhr.getResponseHeader("HX-Trigger")) return;
    const reason = xhr.status === 403 ? "Not allowed — try reloading the page." : xhr.statusText;
    show(`Request failed (${xhr.status}${reason ? ": " + reason : ""}).`, "error");
  });

  document.addEventListener("htmx:sendError", () => {
    show("Cannot reach the server; retrying.", "warning");
  });

  // htmx snapshots the page for the back button, toasts included; #toasts is hx-preserve, so a
  // restore keeps the live toasts and never replays the snapshot's.

  function armServerToasts() {
    const box = region();
    if (!box) return;
    box.querySelectorAll(".toast").forEach(arm);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", armServerToasts);
  } else {
    armServerToasts();
  }
})();
