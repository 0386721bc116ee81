// The console's behaviour, driven by data attributes. Pages carry no inline script and no
// on*= handler: the Content-Security-Policy allows scripts from this site's files only.
(function () {
  "use strict";

  var drawn = [];  // every element a chart was drawn in, to purge once it leaves the page

  function draw(target, figure) {
    Plotly.react(target, figure.data, figure.layout, { displaylogo: false, responsive: true });
    if (drawn.indexOf(target) < 0) drawn.push(target);
  }

  function figureIn(id) {
    var source = document.getElementById(id);
    return source ? { source: source, figure: JSON.parse(source.textContent) } : null;
  }

  // Charts in `root` (the page, or a fragment htmx just swapped in):
  //  - <div data-mint-chart="ID">: the figure in the json_script element #ID. The element
  //    may sit outside the fragment that brings new data (the job page's loss curve):
  //    it is redrawn whenever its data arrives.
  //  - <div data-mint-figures="ID"> holding <div data-figure="NAME">: figures by name in
  //    the json_script element #ID. These elements carry no id: htmx would move an old
  //    element's attributes onto its namesake while settling, stripping plotly's classes.
  function drawCharts(root) {
    if (!window.Plotly) return;
    drawn = drawn.filter(function (old) {
      if (document.body.contains(old)) return true;
      Plotly.purge(old);  // in a fragment that was replaced: drop its resize listener
      return false;
    });
    document.querySelectorAll("[data-mint-chart]").forEach(function (target) {
      var found = figureIn(target.dataset.mintChart);
      if (found && (root.contains(found.source) || root.contains(target))) draw(target, found.figure);
    });
    var groups = root.matches("[data-mint-figures]") ? [root] : [];
    root.querySelectorAll("[data-mint-figures]").forEach(function (group) { groups.push(group); });
    groups.forEach(function (group) {
      var found = figureIn(group.dataset.mintFigures);
      if (!found) return;
      group.querySelectorAll("[data-figure]").forEach(function (target) {
        var figure = found.figure[target.dataset.figure];
        if (figure) draw(target, figure);
      });
    });
  }

  // <form data-confirm="Are you sure?">: ask before it is sent.
  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // The study form's live count of training runs: <output data-study-runs> in the form.
  function countStudyRuns(root) {
    var output = root.querySelector("output[data-study-runs]");
    if (!output) return;
    var form = output.form || output.closest("form");
    function ticked(name) { return form.querySelectorAll("input[name=" + name + "]:checked").length; }
    function count() {
      var seeds = parseInt(form.elements.seeds.value, 10) || 0;
      var fleet = form.querySelector("input[name=cohort]:checked").value === "fleet";
      var handles = form.elements.adapters.value.split(/[\s,]+/).filter(Boolean);
      var people = fleet ? new Set(handles).size : parseInt(form.elements.people.value, 10) || 0;
      form.querySelectorAll("[data-cohort]").forEach(function (el) {
        el.hidden = el.getAttribute("data-cohort") !== (fleet ? "fleet" : "generated");
      });
      var runs = ticked("bases") * ticked("ranks") * ticked("targets") * ticked("inits") * seeds * people;
      output.textContent = runs.toLocaleString("en");
    }
    form.addEventListener("input", count);
    form.addEventListener("change", count);
    count();
  }

  function start(root) {
    drawCharts(root);
    countStudyRuns(root);
  }

  // htmx calls this for the page once it is ready, then for every fragment it swaps in.
  if (window.htmx) {
    htmx.onLoad(start);
  } else {
    document.addEventListener("DOMContentLoaded", function () { start(document.body); });
  }
})();
