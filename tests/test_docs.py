"""The documentation site and README: built offline by tools/build_docs.py, every page opened in headless Chromium.

The browser is Debian's chromium (installed by `bash tools/setup.sh --test`), driven over the Chrome DevTools
Protocol with the `websocket-client` package. Without chromium the browser test fails (the README's test command
installs it), so it can never pass by skipping. Screenshots of the index and of the first theory page
are saved under the test's temporary folder (and copied to $GPM_DOCS_SCREENSHOTS when that is set).
"""
import importlib.util, json, os, re, shutil, subprocess, sys, threading, time, urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, unquote
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic', '--no-proxy-server', '--hide-scrollbars',
         '--disable-extensions', '--mute-audio', '--window-size=1280,900']
SECTIONS = {'Theory', 'Library', 'Experiments'}

def _load_build_docs():
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'tools/build_docs.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

bd = _load_build_docs()

# ------------------------------------------------------------------------------------------- configuration

def test_quarto_yml_is_one_file():
    "nbdev/Quarto read nbs/_quarto.yml; it must be a link to the top-level _quarto.yml, not a second copy."
    link = NBS/'_quarto.yml'
    assert link.is_symlink(), 'nbs/_quarto.yml must be a symbolic link to ../_quarto.yml'
    assert link.resolve() == (ROOT/'_quarto.yml').resolve()

def test_sidebar_lists_every_notebook_in_order():
    entries = bd.read_sidebar(ROOT/'_quarto.yml', NBS)
    assert not bd.sidebar_problems(entries, NBS), '\n'.join(bd.sidebar_problems(entries, NBS))
    assert entries[0]['file'] == 'index.ipynb' and entries[0]['section'] is None
    assert {e['section'] for e in entries[1:]} <= SECTIONS, 'sidebar sections are Theory / Library / Experiments'
    assert all(e['section'] is not None for e in entries[1:]), 'every notebook but index.ipynb sits in a section'
    nums = [int(re.match(r'(\d+)', Path(e['file']).name)[1]) for e in entries[1:]]
    assert nums == sorted(nums), f'the sidebar must follow notebook order, got {nums}'

def test_sidebar_check_catches_missing_and_unknown_notebooks(tmp_path):
    for n in ('index.ipynb', '00_a.ipynb', '01_b.ipynb', '_scratch.ipynb'): (tmp_path/n).write_text('{}')
    q = tmp_path/'_quarto.yml'
    q.write_text('website:\n  sidebar:\n    contents:\n      - index.ipynb\n'
                 '      - section: Library\n        contents: [00_a.ipynb, 02_c.ipynb]\n')
    probs = bd.sidebar_problems(bd.read_sidebar(q, tmp_path), tmp_path)
    assert any('01_b.ipynb' in p and 'not in the sidebar' in p for p in probs), probs
    assert any('02_c.ipynb' in p and 'not in nbs/' in p for p in probs), probs
    assert not any('_scratch' in p for p in probs), 'notebooks starting with _ are scratch, as in nbdev'
    q.write_text('website:\n  sidebar:\n    style: floating\n')
    with pytest.raises(SystemExit, match='exactly once'): bd.read_sidebar(q, tmp_path)

def test_page_names_follow_nbdev_doclinks():
    assert bd.page_name('00_core.ipynb') == 'core.html'
    assert bd.page_name('10_wgf.ipynb') == 'wgf.html'
    assert bd.page_name('index.ipynb') == 'index.html'

def test_build_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    (tmp_path/'precious.txt').write_text('keep me')
    with pytest.raises(SystemExit, match='refusing to replace'): bd.build_site(tmp_path, quiet=True)
    assert (tmp_path/'precious.txt').read_text() == 'keep me'

def test_quarto_cell_options_are_applied():
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('#| code-fold: show\n#| code-summary: "Exported source"\ndef f(): pass'),
        nbformat.v4.new_code_cell('#| echo: false\n1 + 1'), nbformat.v4.new_code_cell('#| include: false\n2'),
        nbformat.v4.new_code_cell('#| output: false\nprint(3)', outputs=[nbformat.v4.new_output('stream', text='3')])])
    bd.apply_cell_options(nb)
    assert [c.source for c in nb.cells] == ['def f(): pass', '1 + 1', 'print(3)']
    assert nb.cells[0].metadata['tags'] == ['gpm-fold-show'] and nb.cells[0].metadata['gpm_summary'] == 'Exported source'
    assert nb.cells[1].metadata['transient']['remove_source'] and nb.cells[2].outputs == []

def test_markdown_math_becomes_mathjax_elements():
    html = bd.markdown_html(r'the flow $v = \nabla\log p$ and $$\partial_t q = 0$$ and `$HOME`')
    assert html.count('<script type="math/tex">') == 1 and html.count('mode=display') == 1
    assert '$HOME' in html and '\\nabla\\log p' in html
    a = bd.markdown_html('[source](https://x.org/a.py#L3){target="_blank" style="float:right"}')
    assert '<a href="https://x.org/a.py#L3" target="_blank"' in a and '{target' not in a

def test_docs_build_runs_only_the_imports_of_cells_that_also_compute():
    "nbdev runs cells that import while it builds docs; of a cell that also computes, the build runs the imports only."
    from execnb.nbio import mk_cell
    assert bd._imports_only(mk_cell('import math\nfrom os import path\nmodel = train_for_an_hour()')) == \
        'import math\nfrom os import path'
    assert bd._imports_only(mk_cell('import math')) is None       # runs as nbdev runs it
    assert bd._imports_only(mk_cell('x = slow()')) is None        # nbdev does not run it at all
    assert bd._imports_only(mk_cell('show_doc(f)\nimport math')) is None

def test_readme_is_up_to_date():
    "README.md is generated from nbs/index.ipynb; regenerate it when the notebook changes."
    probs = bd.readme_problems(ROOT)
    assert not probs, ('README.md is out of date with nbs/index.ipynb: ' + '; '.join(probs) +
                       '. Run: .venv/bin/python tools/build_docs.py --readme')
    text = (ROOT/'README.md').read_text()
    for cmd in ('bash tools/setup.sh && .venv/bin/gpm_train --method discr_flow --data gaussians5 --preset cpu --out runs/discr_flow',
                'bash tools/setup.sh --test && .venv/bin/python -m pytest -n 2 tests'):
        assert cmd in text, f'README lacks the command: {cmd}'
    imgs = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
    assert imgs, 'README shows the picture of particles flowing'
    for i in imgs:
        assert (ROOT/i).is_file() and (ROOT/i).stat().st_size < 300_000, f'{i} missing or too big'

# ------------------------------------------------------------------------------------------------ browser

class Browser:
    "Headless chromium driven over the Chrome DevTools Protocol (one page, events collected)."
    def __init__(self, profile:Path):
        import websocket
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f'--user-data-dir={profile}', '--remote-debugging-port=0',
                                      'about:blank'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = profile/'DevToolsActivePort', time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None: raise RuntimeError(f'chromium exited with status {self.proc.returncode}')
            if time.time() - t0 > 60: raise RuntimeError('chromium did not open its DevTools port in 60 s')
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(50):
            targets = json.load(opener.open(f'http://127.0.0.1:{port}/json/list', timeout=10))
            pages = [t for t in targets if t.get('type') == 'page']
            if pages: break
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]['webSocketDebuggerUrl'], timeout=60, suppress_origin=True,
                                              http_no_proxy=['127.0.0.1', 'localhost'])
        self.n, self.events = 0, []
        for m in ('Page.enable', 'Runtime.enable', 'Log.enable', 'Network.enable'): self.send(m)

    def send(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                if 'error' in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg['result']
            if 'method' in msg: self.events.append(msg)

    def wait_for(self, event, timeout=60):
        t0 = time.time()
        while not any(e['method'] == event for e in self.events):
            if time.time() - t0 > timeout: raise TimeoutError(f'no {event} in {timeout} s')
            self.ws.settimeout(max(0.1, timeout - (time.time() - t0)))
            msg = json.loads(self.ws.recv())
            if 'method' in msg: self.events.append(msg)
        self.ws.settimeout(60)

    def eval(self, js, timeout=60):
        r = self.send('Runtime.evaluate', expression=js, returnByValue=True, awaitPromise=True, timeout=timeout*1000)
        if 'exceptionDetails' in r: raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r['result'].get('value')

    def open(self, url):
        self.events.clear()
        self.send('Page.navigate', url=url)
        self.wait_for('Page.loadEventFired')

    def errors(self):
        "Console errors, uncaught exceptions and error log entries (failed loads) since the last `open`."
        res = []
        for e in self.events:
            m, p = e['method'], e['params']
            if m == 'Runtime.consoleAPICalled' and p['type'] in ('error', 'assert'):
                res.append('console: ' + ' '.join(str(a.get('value', a.get('description', ''))) for a in p['args']))
            elif m == 'Runtime.exceptionThrown':
                d = p['exceptionDetails']; res.append('exception: ' + d.get('exception', {}).get('description', d.get('text', '')))
            elif m == 'Log.entryAdded' and p['entry']['level'] == 'error':
                res.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == 'Network.loadingFailed' and not p.get('canceled'):
                res.append(f"network: {p.get('errorText')} ({p.get('type')})")
        return res

    def requests(self): return [e['params']['request']['url'] for e in self.events if e['method'] == 'Network.requestWillBeSent']

    def screenshot(self, path:Path, full:bool=False, max_height:int=7000):
        import base64
        params = dict(format='png')
        if full:
            h = self.eval('document.documentElement.scrollHeight')
            params.update(captureBeyondViewport=True, clip=dict(x=0, y=0, width=1280, height=min(h, max_height), scale=1))
        path.write_bytes(base64.b64decode(self.send('Page.captureScreenshot', **params)['data']))

    def close(self):
        try: self.ws.close()
        finally:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(10)

# Wait until MathJax has typeset the page (it loads its parts from the site itself).
WAIT_MATHJAX = """new Promise((resolve, reject) => {
  const t0 = Date.now();
  (function poll() {
    if (window.MathJax && MathJax.Hub && MathJax.Hub.queue) { MathJax.Hub.Queue(() => resolve('typeset')); return; }
    if (Date.now() - t0 > 20000) { resolve(window.MathJax ? 'mathjax not started' : 'no mathjax'); return; }
    setTimeout(poll, 50);
  })();
})"""

# Everything checked on a page, gathered in one pass.
INSPECT = r"""(() => {
  const refs = [];
  for (const el of document.querySelectorAll('a[href]')) refs.push({kind: 'a', url: el.getAttribute('href')});
  for (const el of document.querySelectorAll('img[src], script[src], source[src], iframe[src], video[src], audio[src]'))
    refs.push({kind: el.tagName.toLowerCase(), url: el.getAttribute('src')});
  for (const el of document.querySelectorAll('link[href]')) refs.push({kind: 'link ' + el.rel, url: el.getAttribute('href')});
  for (const r of refs) { try { r.abs = new URL(r.url, location.href).href } catch (e) { r.abs = null } }
  const imgs = [...document.querySelectorAll('img')];
  const badImgs = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute('src') || '').slice(0, 120));
  const maths = [...document.querySelectorAll('script[type^="math/tex"]')];
  const merror = n => !!n && (n.type === 'merror' || (n.data || []).some(merror));
  const unrendered = [], mathErrors = [];
  for (const s of maths) {
    const jax = window.MathJax && MathJax.Hub && MathJax.Hub.getJaxFor(s);
    if (!jax || !document.getElementById(jax.inputID + '-Frame')) unrendered.push(s.text.slice(0, 80));
    else if (merror(jax.root)) mathErrors.push(s.text.slice(0, 80));
  }
  const rawTeX = [];
  const skip = 'script, style, pre, code, textarea, .MathJax, .MathJax_Display, .MathJax_Preview, .MathJax_SVG';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const pat = /\$\$|\$[^$\s][^$]*\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\(frac|nabla|mathcal|mathbb|mathrm|sqrt|partial|sigma|eta|theta|log)\b/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest(skip)) continue;
    const m = n.textContent.match(pat);
    if (m) rawTeX.push(n.textContent.trim().slice(0, 120));
  }
  return {title: document.title, refs, nImgs: imgs.length, badImgs, nMath: maths.length, unrendered, mathErrors,
          mathjaxErrors: document.querySelectorAll('.MathJax_Error, .mjx-merror').length, rawTeX,
          ids: [...document.querySelectorAll('[id]')].map(e => e.id),
          sidebar: [...document.querySelectorAll('nav.gpm-sidebar a')].map(a => a.getAttribute('href')),
          pager: [...document.querySelectorAll('nav.gpm-pager a')].map(a => a.getAttribute('href')),
          apiBlocks: document.querySelectorAll('.gpm-api').length,
          textLength: document.querySelector('main').innerText.length};
})()"""

def _math_in_notebook(path:Path) -> int:
    "Formulas in a notebook's markdown cells (code spans and fenced code removed), counted independently."
    n = 0
    for c in json.loads(path.read_text())['cells']:
        if c['cell_type'] != 'markdown': continue
        s = ''.join(c['source'])
        s = re.sub(r'```.*?```', '', s, flags=re.S)
        s = re.sub(r'`[^`\n]*`', '', s)
        n += len(re.findall(r'\$\$.+?\$\$|\$[^$\n]+?\$|\\begin\{(\w+\*?)\}.*?\\end\{\1\}', s, flags=re.S))
    return n

def _has_exports(path:Path) -> bool:
    return any(c['cell_type'] == 'code' and re.match(r'\s*#\|\s*exports?\b', ''.join(c['source']))
               for c in json.loads(path.read_text())['cells'])

class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

def _build(out:Path) -> Path:
    "The site built by the one documented command, into `out`."
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT/'tools/build_docs.py'), '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f'the build failed:\n{r.stdout}\n{r.stderr}'
    print(r.stdout.strip().splitlines()[-1], f'(wall {time.time()-t0:.1f} s)')
    return out

def _check_self_contained(site:Path):
    "Every page exists, and no page or stylesheet refers to anything on the network (scripts, styles, fonts)."
    manifest = json.loads((site/'site.json').read_text())
    entries = bd.read_sidebar(ROOT/'_quarto.yml', NBS)
    assert [p['file'] for p in manifest['pages']] == [e['file'] for e in entries]
    for p in manifest['pages']: assert (site/p['html']).is_file()
    ext_html = re.compile(r'<(?:script|img|iframe|source|video|audio)\b[^>]*\bsrc\s*=\s*["\']?(?:https?:)?//'
                          r'|<link\b[^>]*\bhref\s*=\s*["\']?(?:https?:)?//', re.I)
    for f in site.rglob('*.html'):
        m = ext_html.search(f.read_text(encoding='utf-8'))
        assert not m, f'{f.name} loads from the network: {m[0]}'
    for f in site.rglob('*.css'):
        m = re.search(r'@import|url\(\s*["\']?(?:https?:)?//', f.read_text(encoding='utf-8'))
        assert not m, f'{f.name} loads from the network: {m[0]}'
    assert (site/'mathjax/MathJax.js').is_file()

def test_site_builds_offline_and_every_page_renders_in_chromium(tmp_path):
    "One build (one test, so that pytest -n 2 builds once): static checks, then every page in headless chromium."
    site = _build(tmp_path/'site')
    _check_self_contained(site)
    assert CHROMIUM is not None, 'chromium is not installed: bash tools/setup.sh --test installs it (Debian package chromium)'
    manifest = json.loads((site/'site.json').read_text())
    pages = manifest['pages']
    theory = next((p for p in pages if p['section'] == 'Theory'), None)
    shots = {'index.html': 'index'} | ({theory['html']: Path(theory['html']).stem} if theory else {})
    shot_dir = tmp_path/'screenshots'; shot_dir.mkdir()
    server = ThreadingHTTPServer(('127.0.0.1', 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{server.server_address[1]}/'
    browser = Browser(tmp_path/'profile')
    problems, infos, t0 = [], {}, time.time()
    try:
        for p in pages:
            name, url = p['html'], base + p['html']
            browser.open(url)
            state = browser.eval(WAIT_MATHJAX)
            info = browser.eval(INSPECT)
            infos[name] = info
            bad = lambda msg: problems.append(f'{name}: {msg}')
            if state != 'typeset': bad(f'MathJax did not run ({state})')
            for e in browser.errors(): bad(e)
            for u in browser.requests():
                if not (u.startswith(base) or u.startswith(('data:', 'blob:', 'about:'))): bad(f'network request to {u}')
            if info['textLength'] < 200: bad('the page is (nearly) empty')
            for r in info['refs']:
                abs_ = r['abs'] or ''
                if abs_.startswith(base):
                    parts = urlsplit(abs_)
                    f = site/unquote(parts.path[len(urlsplit(base).path):])
                    if f.is_dir(): f = f/'index.html'
                    if not f.is_file(): bad(f"broken {r['kind']} {r['url']}")
                    elif parts.fragment and f.suffix == '.html':
                        target = info if f == site/name else None
                        ids = set(target['ids']) if target else set(re.findall(r'\bid="([^"]+)"', f.read_text(encoding='utf-8')))
                        if not {parts.fragment, unquote(parts.fragment)} & ids: bad(f"link to a missing anchor {r['url']}")
                elif abs_.startswith(('http:', 'https:', '//')):
                    if r['kind'] != 'a': bad(f"{r['kind']} from the network: {r['url']}")
                elif not abs_.startswith(('data:', 'mailto:', 'javascript:')): bad(f"odd reference {r['kind']} {r['url']}")
            for s in info['badImgs']: bad(f'image does not load: {s}')
            for s in info['unrendered']: bad(f'formula not typeset: {s}')
            for s in info['mathErrors']: bad(f'formula with a TeX error: {s}')
            if info['mathjaxErrors']: bad(f"{info['mathjaxErrors']} MathJax error element(s)")
            for s in info['rawTeX']: bad(f'raw TeX in the visible text: {s!r}')
            expected = _math_in_notebook(NBS/p['file'])
            if info['nMath'] < expected: bad(f"{info['nMath']} formulas on the page, {expected} in the notebook")
            if info['nMath'] != p['n_math']: bad(f"{info['nMath']} formulas in the browser, {p['n_math']} built")
            if info['nImgs'] < p['n_images']: bad(f"{info['nImgs']} images shown, {p['n_images']} saved figures")
            if _has_exports(NBS/p['file']) and not info['apiBlocks']: bad('exports symbols but shows no API reference')
            if len(info['sidebar']) != len(pages): bad(f"sidebar has {len(info['sidebar'])} links for {len(pages)} pages")
            i = pages.index(p)
            want_pager = ([pages[i-1]['html']] if i else []) + ([pages[i+1]['html']] if i+1 < len(pages) else [])
            if info['pager'] != want_pager: bad(f"previous/next links {info['pager']}, expected {want_pager}")
            if name in shots:
                browser.screenshot(shot_dir/f'{shots[name]}.png')
                browser.screenshot(shot_dir/f'{shots[name]}_full.png', full=True)
        print(f'{len(pages)} pages checked in chromium in {time.time()-t0:.1f} s; screenshots in {shot_dir}')
    finally:
        browser.close(); server.shutdown(); server.server_close()
    if os.environ.get('GPM_DOCS_SCREENSHOTS'):
        shutil.copytree(shot_dir, os.environ['GPM_DOCS_SCREENSHOTS'], dirs_exist_ok=True)
    assert {f.name for f in shot_dir.iterdir()} >= {f'{s}.png' for s in shots.values()}
    for f in shot_dir.iterdir(): assert f.stat().st_size > 10_000, f'{f.name} looks blank'
    assert sum(i['nMath'] for i in infos.values()) > 0 and sum(i['nImgs'] for i in infos.values()) > 0
    assert not problems, f'{len(problems)} problem(s) on the site:\n' + '\n'.join(problems[:60])
