// The HR console's script: a template's live preview, and "line N" links that move the cursor
// to that line of an editor. Loaded with `defer` from /console/static (the pages' CSP forbids
// inline scripts). Every page works without it: the Preview button renders on the server.
(function () {
  "use strict";

  // A problem's "line N" link: put the cursor at the start of that line of its editor.
  document.addEventListener("click", function (event) {
    var link = event.target.closest("[data-jump][data-line]");
    if (!link) return;
    var editor = document.getElementById(link.getAttribute("data-jump"));
    if (!editor) return;
    event.preventDefault();
    var line = parseInt(link.getAttribute("data-line"), 10) || 1;
    var at = 0;
    for (var i = 1; i < line; i++) {
      var next = editor.value.indexOf("\n", at);
      if (next < 0) break;
      at = next + 1;
    }
    editor.focus();
    editor.setSelectionRange(at, at);
    // Scroll the line into view: the textarea's line height times the lines above it.
    var height = parseFloat(getComputedStyle(editor).lineHeight) || 18;
    editor.scrollTop = Math.max(0, (line - 3) * height);
  });

  var form = document.querySelector("form[data-preview-url]");
  if (!form) return;
  var url = form.getAttribute("data-preview-url");
  var token = form.getAttribute("data-csrf");
  var editors = form.querySelectorAll("textarea[data-part]");
  var status = document.getElementById("preview-status");
  var pane = document.getElementById("preview");
  var timer = null;
  var latest = 0; // the newest request: an older answer arriving late is dropped

  function say(text) {
    status.textContent = text;
  }

  function texts() {
    var parts = {};
    editors.forEach(function (editor) {
      parts[editor.getAttribute("data-part")] = editor.value;
    });
    return parts;
  }

  function item(problem, withPart) {
    var li = document.createElement("li");
    var where = withPart ? problem.part + (problem.line ? ", " : "") : "";
    if (problem.line && !withPart) {
      var link = document.createElement("a");
      link.href = "#part-" + problem.part;
      link.setAttribute("data-jump", "part-" + problem.part);
      link.setAttribute("data-line", String(problem.line));
      link.textContent = "line " + problem.line;
      li.appendChild(link);
      li.appendChild(document.createTextNode(": "));
    } else if (problem.line) {
      where += "line " + problem.line;
    }
    li.appendChild(document.createTextNode((where ? where + ": " : "") + problem.problem));
    if (problem.fix) {
      var fix = document.createElement("span");
      fix.className = "fix";
      fix.textContent = " Fix: " + problem.fix;
      li.appendChild(fix);
    }
    return li;
  }

  function show(answer) {
    var lists = {};
    form.querySelectorAll("[data-problems-for]").forEach(function (list) {
      list.replaceChildren();
      lists[list.getAttribute("data-problems-for")] = list;
    });
    editors.forEach(function (editor) {
      editor.removeAttribute("aria-invalid");
    });
    answer.problems.forEach(function (problem) {
      var own = lists[problem.part];
      (own || lists[""]).appendChild(item(problem, !own));
      var editor = document.getElementById("part-" + problem.part);
      if (editor) editor.setAttribute("aria-invalid", "true");
    });
    if (answer.problems.length) {
      // Keep the last good preview on screen, marked as out of date.
      pane.classList.add("stale");
      say(answer.problems.length === 1 ? "1 problem" : answer.problems.length + " problems");
      return;
    }
    pane.classList.remove("stale");
    document.getElementById("preview-subject").textContent = answer.subject;
    document.getElementById("preview-text").textContent = answer.text;
    document.getElementById("preview-html").srcdoc = answer.html;
    say("up to date");
  }

  function refresh() {
    var mine = ++latest;
    say("updating…");
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify({ parts: texts() }),
    })
      .then(function (response) {
        if (mine !== latest) return null;
        if (response.status === 401) {
          say("your session has ended: sign in again to preview");
          return null;
        }
        if (!response.ok) {
          say("the preview is unavailable (" + response.status + ")");
          return null;
        }
        return response.json();
      })
      .then(function (answer) {
        if (answer && mine === latest) show(answer);
      })
      .catch(function () {
        if (mine === latest) say("the preview is unavailable (no connection)");
      });
  }

  form.addEventListener("input", function (event) {
    if (!event.target.matches("textarea[data-part]")) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  });
})();
