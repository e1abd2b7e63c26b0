// The user menu is a <details>: close it on a click elsewhere or on Escape.
(function () {
  "use strict";

  function openMenus() {
    return document.querySelectorAll("details.user-menu[open]");
  }

  document.addEventListener("click", (event) => {
    for (const menu of openMenus()) {
      if (!menu.contains(event.target)) menu.removeAttribute("open");
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    for (const menu of openMenus()) {
      menu.removeAttribute("open");
      menu.querySelector("summary").focus();
    }
  });
})();
