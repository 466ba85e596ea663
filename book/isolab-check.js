// Records, on <body data-isolab-check>, how many images the page has,
// which did not load, and any script errors: the browser test reads it.
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
  }, true);
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
    document.body.setAttribute('data-isolab-check',
      JSON.stringify({ images: imgs.length, broken: broken, errors: errors }));
  }
  if (document.readyState === 'complete') { check(); } else { window.addEventListener('load', check); }
})();
