// Keeps "3 s ago" labels (<time datetime=… data-relative>) true between refreshes.
// Same wording as the `ago` filter in jobs/templatetags/jobs_ui.py.
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const MINUTE = 60;
  const HOUR = 60 * MINUTE;
  const DAY = 24 * HOUR;
  const WEEK = 7 * DAY;

  function ago(date) {
    const seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 1) return "just now";
    if (seconds < MINUTE) return `${Math.floor(seconds)} s ago`;
    if (seconds < HOUR) return `${Math.floor(seconds / MINUTE)} min ago`;
    if (seconds < DAY) return `${Math.floor(seconds / HOUR)} h ago`;
    if (seconds < WEEK) return `${Math.floor(seconds / DAY)} d ago`;
    return null; // older ones show a date, which does not go stale
  }

  function refresh() {
    for (const element of document.querySelectorAll("time[data-relative]")) {
      const date = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      const text = ago(date);
      if (text !== null && element.textContent !== text) element.textContent = text;
    }
  }

  window.setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
})();
