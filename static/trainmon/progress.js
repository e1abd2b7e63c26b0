// Progress bars: the fill's width comes from its data-width ("37.50%"), set here through the
// CSSOM because the Content-Security-Policy refuses style="" attributes. An htmx refresh first
// settles the old data-width into the new fill, then the new one (htmx-config's
// attributesToSettle), so the width changes on a live element and the CSS transition runs.
(function () {
  "use strict";

  const SELECTOR = ".progress-fill[data-width]";

  function apply(fill) {
    fill.style.width = fill.dataset.width;
  }

  function applyWithin(node) {
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    if (node.matches(SELECTOR)) apply(node);
    node.querySelectorAll(SELECTOR).forEach(apply);
  }

  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      if (mutation.type === "attributes") applyWithin(mutation.target);
      else mutation.addedNodes.forEach(applyWithin);
    }
  }).observe(document.documentElement, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["data-width"],
  });

  applyWithin(document.documentElement);
})();
