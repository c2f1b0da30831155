// Typeset TeX to MathJax CHTML markup in Node, for book/_ext/prerender_math.py.
// stdin:  {"mathjax": <es5 dir>, "fontURL": ..., "macros": {...}, "items": [[tex, display], ...]}
// stdout: {"html": [markup or null, ...], "errors": [[index, message], ...], "css": stylesheet}
const fs = require('fs');
const data = JSON.parse(fs.readFileSync(0, 'utf8'));
const {init} = require(data.mathjax + '/node-main.js');

init({
  loader: {load: ['input/tex', 'output/chtml', 'a11y/assistive-mml']},
  tex: {
    macros: data.macros,
    // Without these two, an unknown macro or a TeX error is drawn in red on the page instead
    // of failing the build.
    packages: {'[-]': ['noundefined', 'noerrors']},
    formatError: (jax, err) => { throw err; },
  },
  // The stylesheet covers only the glyphs typeset in this run (31 KB for the book, against
  // 243 KB for all of them), so the caller sends every formula of the site.
  chtml: {fontURL: data.fontURL},
}).then((MathJax) => {
  const adaptor = MathJax.startup.adaptor;
  const html = [], errors = [];
  data.items.forEach(([tex, display], i) => {
    try {
      html.push(adaptor.outerHTML(MathJax.tex2chtml(tex, {display})));
    } catch (err) {
      html.push(null);
      errors.push([i, String(err.message || err)]);
    }
  });
  process.stdout.write(JSON.stringify({html, errors, css: adaptor.textContent(MathJax.chtmlStylesheet())}));
}).catch((err) => { console.error(err); process.exit(1); });
