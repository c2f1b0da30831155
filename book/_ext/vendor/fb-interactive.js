// Draw each kernel-free figure (book/_ext/interactive.py) when it nears the viewport. Vega's
// three libraries (~0.8 MB) load only then, so a reader who never scrolls to one never pays.
(() => {
  const base = document.currentScript.src.replace(/[^/]*$/, "");
  const libraries = ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"];
  let loaded = null;
  const load = () => loaded ??= Promise.all(libraries.map((name) => new Promise((ok, fail) => {
    const script = document.createElement("script");
    script.src = base + name;
    script.async = false;   // download together, run in order: vega-lite needs vega, embed both
    script.onload = ok;
    script.onerror = () => fail(new Error(`could not load ${name}`));
    document.head.append(script);
  })));
  const draw = async (figure) => {
    await load();
    const spec = JSON.parse(figure.querySelector('script[type="application/json"]').textContent);
    const result = await vegaEmbed(figure.querySelector(".fb-interactive-figure"), spec,
                                   {actions: false, renderer: "svg"});
    figure.fbView = result.view;   // the smoke test waits for it
  };
  const start = () => {
    const observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        observer.unobserve(entry.target);
        draw(entry.target).catch(console.error);
      }
    }, {rootMargin: "800px 0px"});
    document.querySelectorAll(".fb-interactive").forEach((figure) => observer.observe(figure));
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
