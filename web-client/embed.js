/*! Switchboard chat snippet. Paste into any page:
 *   <script src="https://YOUR-SERVER/embed.js" async
 *     data-quick="QUICK-LINK-TOKEN" data-team="t_…" data-color="#1a73e8"
 *     data-position="right" data-greeting="您好，有什么可以帮您？"
 *     data-topics="售前,售后" data-lang="zh-CN"
 *     data-identity='{"id":"c42","name":"张三","ts":1795000000000,"sig":"…"}'></script>
 * or set window.SwitchboardConfig = {quick, team, color, position, greeting,
 * topics, lang, server, identity} before it loads (all optional; with neither
 * quick nor identity the visitor starts anonymously). A launcher button opens the
 * widget in an iframe; the quick-link token travels in the iframe's URL
 * fragment, which is never sent to any server. `identity` is the site's
 * logged-in customer signed by the site's backend (see the README); it is
 * handed to the iframe by postMessage once the widget asks, never in a URL. */
(function () {
  var s = document.currentScript;
  var g = window.SwitchboardConfig || {};
  var d = (s && s.dataset) || {};
  function opt(k) { return g[k] != null ? String(g[k]) : d[k] != null ? d[k] : ''; }
  var server = opt('server') || (s ? new URL(s.src).origin : location.origin);
  var color = /^#?[0-9a-fA-F]{3,8}$/.test(opt('color')) ? '#' + opt('color').replace('#', '') : '#1a73e8';
  var left = opt('position') === 'left';
  var idn = g.identity || d.identity || null;
  if (typeof idn === 'string') { try { idn = JSON.parse(idn); } catch (e) { idn = null; } }
  var q = new URLSearchParams({ embed: '1' });
  if (idn) q.set('identity', '1');
  ['team', 'greeting', 'topics', 'lang'].forEach(function (k) { if (opt(k)) q.set(k, opt(k)); });
  q.set('color', color.slice(1));
  var src = server + '/widget?' + q + (opt('quick') ? '#quick=' + encodeURIComponent(opt('quick')) : '');
  var side = left ? 'left' : 'right';
  var frame = null;
  var btn = document.createElement('button');
  btn.type = 'button';
  btn.setAttribute('aria-label', 'chat');
  btn.textContent = '💬';
  btn.style.cssText = 'position:fixed;bottom:20px;' + side + ':20px;width:56px;height:56px;border-radius:50%;border:0;' +
    'background:' + color + ';color:#fff;font-size:26px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483646';
  btn.onclick = function () {
    if (!frame) {
      frame = document.createElement('iframe');
      frame.src = src;
      frame.title = 'chat';
      frame.allow = 'clipboard-write';
      frame.style.cssText = 'position:fixed;bottom:88px;' + side + ':20px;width:min(380px,calc(100vw - 40px));' +
        'height:min(600px,calc(100vh - 110px));border:0;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);' +
        'background:#fff;z-index:2147483647';
      document.body.appendChild(frame);
    } else frame.style.display = frame.style.display === 'none' ? '' : 'none';
  };
  window.addEventListener('message', function (e) {
    if (!frame || e.source !== frame.contentWindow || !e.data) return;
    if (e.data.type === 'switchboard:hide') frame.style.display = 'none';
    if (e.data.type === 'switchboard:ready' && idn) {
      frame.contentWindow.postMessage({ type: 'switchboard:identity', identity: idn }, new URL(server).origin);
    }
  });
  function mount() { document.body.appendChild(btn); }
  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);
})();
