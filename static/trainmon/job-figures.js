// The job page's progress and stats cards between status changes. A poll with news
// (charts.js) brings jobs.live_figures as JSON: texts already formatted on the server, by
// the name of the data-figure element that shows each, and the progress bar's attributes.
// This puts them in place; it formats nothing, so the page and the poll cannot disagree.
(function () {
  "use strict";

  // null: the attribute is absent (an indeterminate bar has no aria-valuenow).
  function setAttributes(element, attributes) {
    if (!element || !attributes) return;
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null) element.removeAttribute(name);
      else if (element.getAttribute(name) !== value) element.setAttribute(name, value);
    }
  }

  function placeTexts(root, texts) {
    if (!root) return;
    for (const element of root.querySelectorAll("[data-figure]")) {
      const text = texts[element.dataset.figure];
      if (text === undefined) continue;
      if (element.textContent !== text) element.textContent = text;
      element.hidden = text === ""; // a line that does not apply (yet)
    }
  }

  function place(figures) {
    const progress = document.getElementById("job-progress");
    if (!progress) return;
    placeTexts(progress, figures.texts);
    placeTexts(document.getElementById("job-stats"), figures.texts);
    // The fill's new data-width restyles it in place (progress.js): the CSS transition runs.
    setAttributes(progress.querySelector("[role=progressbar]"), figures.bar);
    setAttributes(progress.querySelector(".progress-fill"), figures.fill);
    // The next poll tells the server which write these figures show.
    progress.dataset.ingestSeq = String(figures.ingest_seq);
  }

  document.addEventListener("trainmon:job-figures", (event) => place(event.detail));
})();
