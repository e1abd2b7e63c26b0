// Dashboard: the "Compare selected" button follows the ticked rows, and the table does not
// poll while the tab is hidden (it catches up on the next tick once visible).
(function () {
  "use strict";
  // htmx re-runs body scripts when it restores a page from history (Back): listen once.
  if (window.trainmonDashboard) {
    window.trainmonDashboard.updateCompareButton();
    return;
  }

  const MIN_TO_COMPARE = 2;

  function updateCompareButton() {
    const button = document.getElementById("compare-button");
    const form = document.getElementById("compare-form");
    if (!button || !form) return;
    const ticked = form.querySelectorAll('input[name="jobs"]:checked').length;
    button.disabled = ticked < MIN_TO_COMPARE;
    button.textContent = ticked ? `Compare selected (${ticked})` : "Compare selected";
    button.title = ticked < MIN_TO_COMPARE ? "Tick two or more jobs to compare them" : "";
  }

  window.trainmonDashboard = { updateCompareButton };

  document.addEventListener("change", (event) => {
    if (event.target.matches('input[name="jobs"]')) updateCompareButton();
  });
  document.addEventListener("htmx:afterSettle", updateCompareButton);

  document.addEventListener("htmx:beforeRequest", (event) => {
    if (document.hidden && event.detail.elt.id === "job-table") event.preventDefault();
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", updateCompareButton);
  } else {
    updateCompareButton();
  }
})();
