// Live rows: the admin's operations list and an operation's page refresh the
// status, progress and worker of what is pending or running, every few
// seconds while the tab is visible (one request for the whole page, to the
// list's live/ view). A running operation's page reloads once it finishes,
// to show its result or its error.
(function () {
  "use strict";
  var LIVE = ["pending", "processing"];

  function config() {
    return document.getElementById("ops-live");
  }

  function targets(settings) {
    var found = [];
    document.querySelectorAll("#result_list tbody tr").forEach(function (tr) {
      // The id column's full id (every row has it; the action checkbox only
      // shows for users who may act).
      var id = tr.querySelector(".field-short .ops-id[title]");
      var badge = tr.querySelector("td.field-badge [data-status]");
      if (id && badge && LIVE.indexOf(badge.dataset.status) >= 0) {
        found.push({
          id: id.getAttribute("title"),
          badge: tr.querySelector("td.field-badge"),
          progress: tr.querySelector("td.field-progress_display"),
          worker: tr.querySelector("td.field-worker"),
        });
      }
    });
    var detail = document.querySelector(".form-row.field-badge .readonly");
    if (detail && settings.dataset.id) {
      var badge = detail.querySelector("[data-status]");
      if (badge && LIVE.indexOf(badge.dataset.status) >= 0) {
        found.push({
          id: settings.dataset.id,
          badge: detail,
          progress: document.querySelector(".form-row.field-progress_display .readonly"),
          worker: document.querySelector(".form-row.field-worker .readonly"),
          page: true,
        });
      }
    }
    return found;
  }

  function refresh() {
    var settings = config();
    if (!settings || document.visibilityState !== "visible") return;
    var live = targets(settings);
    if (!live.length) return;
    var query = live.map(function (t) { return "id=" + encodeURIComponent(t.id); }).join("&");
    fetch(settings.dataset.url + "?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : {}; })
      .then(function (rows) {
        live.forEach(function (t) {
          var row = rows[t.id];
          if (!row) return;
          if (t.page && row.terminal) {
            window.location.reload();
            return;
          }
          t.badge.innerHTML = row.badge;
          if (t.progress) t.progress.innerHTML = row.progress;
          if (t.worker) t.worker.textContent = row.worker || "-";
        });
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var settings = config();
    if (!settings) return;
    setInterval(refresh, 1000 * parseFloat(settings.dataset.seconds || "3"));
    document.addEventListener("visibilitychange", refresh);
  });
})();
