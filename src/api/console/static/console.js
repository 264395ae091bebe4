// Charts of per-meter figures: labels and values come from the canvas's data attributes
// (values are decimal strings; the chart only draws them, the tables show them exactly).
(function () {
  "use strict";
  var drawn = new WeakMap();

  function draw(canvas) {
    if (drawn.has(canvas) || typeof Chart === "undefined") { return; }
    var labels = JSON.parse(canvas.getAttribute("data-labels") || "[]");
    var texts = JSON.parse(canvas.getAttribute("data-values") || "[]");
    if (!labels.length) { return; }
    var chart = new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: "quantity", data: texts.map(Number),
        backgroundColor: "#3d6fb6" }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { display: false }, tooltip: { callbacks: {
          label: function (item) { return texts[item.dataIndex]; } } } },
        scales: { y: { beginAtZero: true } }
      }
    });
    drawn.set(canvas, chart);
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas.chart").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawAll(event.target); });
})();
