// Progress bars: each fill's width comes from its data-width ("37.50%"). The
// Content-Security-Policy refuses style="" attributes, and a width set through element.style
// would become one in htmx's history snapshots, so the widths live in a constructed
// stylesheet instead, one rule per fill id. An htmx refresh first settles the old data-width
// into the new fill, then the new one (htmx-config's attributesToSettle), so the width
// changes on a live element and the CSS transition runs.
(function () {
  "use strict";

  const SELECTOR = ".progress-fill[id][data-width]";
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  let scheduled = false;

  function rebuild() {
    scheduled = false;
    const rules = [];
    for (const fill of document.querySelectorAll(SELECTOR)) {
      const width = fill.dataset.width;
      // Only a plain percentage ever reaches the stylesheet.
      if (/^\d+(\.\d+)?%$/.test(width)) rules.push(`#${CSS.escape(fill.id)} { width: ${width}; }`);
    }
    sheet.replaceSync(rules.join("\n"));
  }

  // Once per batch of DOM changes, before the browser next renders.
  function schedule() {
    if (!scheduled) {
      scheduled = true;
      queueMicrotask(rebuild);
    }
  }

  new MutationObserver(schedule).observe(document.documentElement, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["data-width"],
  });
  schedule();
})();
