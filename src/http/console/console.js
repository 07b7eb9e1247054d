// syncpool console: the pages work without this script. It adds two things:
// - live refresh: parts marked data-live are fetched again every 2 s and swapped in
//   place (the page, its scroll position and any open form stay), until nothing on the
//   page moves any more;
// - a confirmation before forms marked data-confirm (cancel, deactivate) are sent.
"use strict";
(function () {
  document.addEventListener("submit", function (e) {
    var message = e.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) e.preventDefault();
  });

  if (!document.querySelector("[data-live]")) return;
  var busy = false;
  var timer = setInterval(async function () {
    if (busy || document.hidden) return;
    busy = true;
    try {
      var res = await fetch(location.href, { credentials: "same-origin" });
      if (!res.ok || res.redirected) return;
      var fresh = new DOMParser().parseFromString(await res.text(), "text/html");
      document.querySelectorAll("[data-live]").forEach(function (el) {
        var next = el.id && fresh.getElementById(el.id);
        if (next) el.replaceWith(document.importNode(next, true));
      });
      if (!document.querySelector("[data-live]")) clearInterval(timer);
    } catch (err) {
      // A failed refresh is retried at the next tick; the page shown stays valid.
    } finally {
      busy = false;
    }
  }, 2000);
})();
