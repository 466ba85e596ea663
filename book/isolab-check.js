// Records, on <body data-isolab-check>, how many images the page has,
// which did not load, which tables are wider than the text column, and
// any script errors: the browser test reads it.
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
  }, true);
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
    var main = document.querySelector('main');
    var limit = (main ? main.getBoundingClientRect().right : window.innerWidth) + 1;
    var wide = Array.prototype.slice.call(document.querySelectorAll('main table'))
                    .filter(function (t) { return t.getBoundingClientRect().right > limit; })
                    .map(function (t) {
                      var th = t.querySelector('th');
                      return th ? th.textContent.trim() : 'a table';
                    });
    document.body.setAttribute('data-isolab-check',
      JSON.stringify({ images: imgs.length, broken: broken, wide: wide, errors: errors }));
  }
  if (document.readyState === 'complete') { check(); } else { window.addEventListener('load', check); }
})();
