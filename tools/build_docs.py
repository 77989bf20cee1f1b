#!/usr/bin/env python
"""Build gpm_nb's documentation site offline (no Quarto, no network), and README.md.

    .venv/bin/python tools/build_docs.py                 # the site -> _docs/  (then open _docs/index.html)
    .venv/bin/python tools/build_docs.py --out DIR       # the site -> DIR
    .venv/bin/python tools/build_docs.py --readme        # README.md and README_files/ from nbs/index.ipynb
    .venv/bin/python tools/build_docs.py --check-readme  # exit 1 when README.md is out of date

What it does, in the order `nbdev_docs` does it before handing over to Quarto:
1. reads the sidebar from `_quarto.yml` (the file Quarto uses; one source of truth) and stops with an error
   when it does not list exactly the notebooks in `nbs/`;
2. runs nbdev's own notebook processing on each notebook (`nbdev.processors.FilterDefaults`: front matter
   from `# Title` / `> summary`, `#| hide` and `#| export` cells removed, `show_doc` for every exported
   symbol, links to the API), exactly as `nbdev.serve.proc_nbs` does;
3. renders each processed notebook with nbconvert's HTML exporter (its JupyterLab template, every network
   reference removed) into one page with its saved figures as files and its animations inline, the
   Quarto cell options nbdev leaves behind applied (`echo`, `output`, `include`, `code-fold`, `fig-cap`);
4. formulas become MathJax `math/tex` elements typeset in the browser by a copy of MathJax 2.7 that the
   site carries (from the PyPI package jupyter-server-mathjax), so math renders with no network;
5. adds the sidebar, an "on this page" list and previous/next links in sidebar order.
"""
from __future__ import annotations
import argparse, base64, json, os, re, shutil, sys, time, warnings
from contextlib import contextmanager
from functools import lru_cache
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent/'docs'
README_FILES = 'README_files'

# ---------------------------------------------------------------------------------------------------------
# Sidebar: read from _quarto.yml (or a file it lists in metadata-files), check against the notebooks on disk
# ---------------------------------------------------------------------------------------------------------

def _load_yaml(path:Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding='utf-8')) or {}

def read_sidebar(quarto_yml:Path, nbs_path:Path) -> list[dict]:
    "Sidebar entries `{'file', 'section', 'text'}` in order, from `website.sidebar.contents`."
    q = _load_yaml(quarto_yml)
    sources = [(quarto_yml.name, q)]
    meta = q.get('metadata-files') or []
    for m in ([meta] if isinstance(meta, str) else meta):
        p = nbs_path/m
        if p.exists(): sources.append((m, _load_yaml(p)))
    found = [(name, d['website']['sidebar']) for name, d in sources
             if isinstance(d.get('website'), dict) and d['website'].get('sidebar')]
    found = [(name, sb) for name, sb in found if isinstance(sb, dict) and 'contents' in sb]
    if len(found) != 1:
        where = ', '.join(n for n, _ in found) or 'nowhere'
        raise SystemExit(f"the sidebar (website.sidebar.contents) must be defined exactly once, in {quarto_yml.name} "
                         f"or a file in its metadata-files; found in: {where}")
    entries = []
    def walk(items, section):
        for it in items or []:
            if isinstance(it, str): entries.append(dict(file=it, section=section, text=None))
            elif isinstance(it, dict) and 'section' in it:
                walk(it.get('contents'), it['section'])
            elif isinstance(it, dict) and (it.get('href') or it.get('file')):
                entries.append(dict(file=it.get('href') or it.get('file'), section=section, text=it.get('text')))
            else: raise SystemExit(f"unsupported sidebar entry in {found[0][0]}: {it!r}")
    walk(found[0][1]['contents'], None)
    return entries

def notebooks_on_disk(nbs_path:Path) -> list[str]:
    "Notebooks nbdev documents: `*.ipynb` under `nbs_path`, skipping names that start with `_` or `.`."
    res = []
    for p in sorted(nbs_path.rglob('*.ipynb')):
        rel = p.relative_to(nbs_path)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        res.append(rel.as_posix())
    return res

def sidebar_problems(entries:list[dict], nbs_path:Path) -> list[str]:
    "What is wrong between the sidebar and the notebooks on disk (empty when they agree)."
    listed = [e['file'] for e in entries]
    disk = notebooks_on_disk(nbs_path)
    probs = [f"{f} is in nbs/ but not in the sidebar of _quarto.yml: add it to its section"
             for f in disk if f not in listed]
    probs += [f"{f} is in the sidebar of _quarto.yml but not in nbs/" for f in listed if not (nbs_path/f).exists()]
    probs += [f"{f} is listed more than once in the sidebar" for f in sorted(set(listed)) if listed.count(f) > 1]
    return probs

def page_name(nb_rel:str) -> str:
    "The page a notebook becomes, as nbdev's doc links expect (`00_core.ipynb` -> `core.html`)."
    p = Path(nb_rel)
    return p.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', p.name.lower())).with_suffix('.html').as_posix()

# ---------------------------------------------------------------------------------------------------------
# nbdev processing
# ---------------------------------------------------------------------------------------------------------

@contextmanager
def _nbdev_env(nbs_path:Path):
    "Run like `nbdev.serve_drv.main`: `IN_TEST=1`, from the notebooks' folder, with a non-interactive backend."
    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in ('IN_TEST', 'MPLBACKEND')}
    os.environ['IN_TEST'] = '1'; os.environ['MPLBACKEND'] = 'Agg'
    os.chdir(nbs_path)
    try: yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v

def _imports_only(cell) -> str|None:
    "For a cell nbdev would run because it imports, but that also computes: its import statements alone."
    import ast
    from nbdev.processors import _do_eval
    if cell.cell_type != 'code' or cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: return None
    with warnings.catch_warnings():  # nbdev warns about exactly these cells; the build reports them itself
        warnings.simplefilter('ignore')
        if 'show_doc' in cell.source or not _do_eval(cell): return None
    body = cell.parsed_() or []
    if all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body): return None
    return '\n'.join(ast.get_source_segment(cell.source, n) for n in body if isinstance(n, (ast.Import, ast.ImportFrom)))

@lru_cache(None)
def _filter_defaults():
    "nbdev's FilterDefaults, whose show_doc executor runs only the imports of cells that mix imports and computation."
    from execnb.nbio import mk_cell
    from nbdev.processors import FilterDefaults, exec_show_docs

    class exec_show_docs_imports(exec_show_docs):
        "`exec_show_docs`, but a cell mixing imports with other code (nbdev warns about these) runs its imports only."
        mixed = []
        def __call__(self, cell):
            imp = _imports_only(cell) if getattr(self.nb, 'has_docs_', False) else None
            if imp is not None:
                exec_show_docs_imports.mixed.append((getattr(self.nb, 'path_', '?'), cell.source.splitlines()[0][:70]))
                tmp = mk_cell(imp); tmp.idx_ = cell.idx_
                cell = tmp
            return super().__call__(cell)

    class SiteFilter(FilterDefaults):
        def base_procs(self):
            return [exec_show_docs_imports if p is exec_show_docs else p for p in super().base_procs()]
    return SiteFilter, exec_show_docs_imports

def process_notebook(path:Path):
    "The notebook at `path` after nbdev's default processors (as `nbdev_docs` hands it to Quarto), as nbformat."
    import nbformat
    from execnb.nbio import read_nb, nb2str
    nb = read_nb(path)
    try: _filter_defaults()[0]()(nb)
    except Exception as e: raise SystemExit(f"nbdev could not process {path.name}: {e}") from e
    return nbformat.reads(nb2str(nb), as_version=4)

def split_frontmatter(nb) -> dict:
    "Remove the YAML front matter cell nbdev's FrontmatterProc adds; return its fields."
    import yaml
    for i, c in enumerate(nb.cells):
        src = c.source.strip()
        if c.cell_type == 'raw' and src.startswith('---') and src.endswith('---'):
            fm = yaml.safe_load(src.strip('-').strip()) or {}
            del nb.cells[i]
            return fm
    return {}

_re_qopt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def _false(v:str) -> bool: return str(v).strip().strip('"\'').lower() in ('false', 'no', '0')

def apply_cell_options(nb) -> None:
    "Apply the Quarto cell options nbdev leaves in code cells (echo, output, include, code-fold, fig-cap)."
    import nbformat
    cells = []
    for c in nb.cells:
        if c.cell_type != 'code': cells.append(c); continue
        lines = c.source.splitlines()
        opts = {}
        while lines and _re_qopt.match(lines[0]):
            k, v = _re_qopt.match(lines.pop(0)).groups()
            opts[k] = v.strip('"\'')
        c.source = '\n'.join(lines).strip('\n')
        if _false(opts.get('include', 'true')): continue
        if _false(opts.get('output', 'true')): c.outputs = []
        if _false(opts.get('echo', 'true')) or not c.source.strip():
            c.metadata.setdefault('transient', {})['remove_source'] = True
        if 'code-fold' in opts and not _false(opts['code-fold']):
            tags = c.metadata.setdefault('tags', [])
            tags.append('gpm-fold-show' if opts['code-fold'] == 'show' else 'gpm-fold')
            c.metadata['gpm_summary'] = opts.get('code-summary', 'Code')
        if c.source.startswith('show_doc(') or (c.metadata.get('transient', {}).get('remove_source')
                                               and any('text/markdown' in o.get('data', {}) for o in c.outputs)):
            c.metadata.setdefault('tags', []).append('gpm-api')
        cells.append(c)
        if opts.get('fig-cap'):
            cells.append(nbformat.v4.new_markdown_cell(f'<p class="gpm-caption">{escape(opts["fig-cap"])}</p>'))
    nb.cells = cells

# ---------------------------------------------------------------------------------------------------------
# Markdown: math as MathJax elements, pandoc link attributes and fenced divs as HTML
# ---------------------------------------------------------------------------------------------------------

_re_link_attrs = re.compile(r'\[([^\]\n]*)\]\(([^)\s]+)\)\{([^}\n]*)\}')
_re_fdiv = re.compile(r'^:::+\s*(?:\{([^}]*)\}|([\w-]+))?\s*$')

def pandoc_to_html(md:str) -> str:
    "Turn the pandoc extensions nbdev emits (`[x](u){attrs}`, `::: {.class}` divs) into HTML mistune keeps."
    md = _re_link_attrs.sub(lambda m: f'<a href="{escape(m[2])}" {m[3]}>{m[1]}</a>', md)
    out, depth = [], 0
    for line in md.split('\n'):
        m = _re_fdiv.match(line)
        if m and (m[1] or m[2]):
            attrs = (m[1] or '.' + m[2]).split()
            classes = [a[1:] for a in attrs if a.startswith('.')]
            if any(c.startswith('callout') for c in classes): classes.insert(0, 'callout')
            out += ['', f'<div class="{" ".join(classes)}">', '']; depth += 1
        elif m and depth: out += ['', '</div>', '']; depth -= 1
        else: out.append(line)
    return '\n'.join(out + ['', '</div>'] * depth)

def math_html(tex:str, display:bool) -> str:
    "A formula as a MathJax element (invisible until MathJax typesets it, so raw TeX never shows)."
    tex = tex.strip().replace('</', '< /')
    return f'<script type="math/tex{"; mode=display" if display else ""}">{tex}</script>'

@lru_cache(None)
def _markdown_classes():
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
    class MathRenderer(IPythonRenderer):
        "nbconvert's markdown renderer, with formulas as MathJax elements."
        def block_math(self, body): return math_html(body, True)
        def inline_math(self, body): return math_html(body, False)
        def latex_environment(self, name, body): return math_html(f'\\begin{{{name}}}{body}\\end{{{name}}}', True)
    return MathRenderer, MarkdownWithMath

def markdown_html(md:str, inline:bool=False, **kw) -> str:
    "Markdown (with math and nbdev's pandoc extensions) to HTML; `inline` drops the paragraph around one line."
    R, M = _markdown_classes()
    html = M(renderer=R(escape=False, **kw)).render(pandoc_to_html(md)).strip()
    if not inline: return html
    if html.startswith('<p>') and html.endswith('</p>') and html.count('<p>') == 1: return html[3:-4]
    return escape(md)  # a title or description that is not one line of inline markdown: show it as text

def _make_exporter():
    from jinja2 import pass_context
    from nbconvert import HTMLExporter

    class SiteExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get('cell', {})
            return markdown_html(source, attachments=cell.get('attachments', {}), embed_images=False,
                                 anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links)

    from traitlets.config import Config
    c = Config()
    c.HTMLExporter.preprocessors = ['nbconvert.preprocessors.ExtractOutputPreprocessor']
    c.ExtractOutputPreprocessor.output_filename_template = '{unique_key}_{cell_index}_{index}{extension}'
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    c.HTMLExporter.anchor_link_text = '¶'
    return SiteExporter(config=c, template_name='gpm', extra_template_basedirs=[str(ASSETS)])

# ---------------------------------------------------------------------------------------------------------
# Page assembly
# ---------------------------------------------------------------------------------------------------------

def _rel(frm:str, to:str) -> str:
    "Relative URL from page `frm` to site path `to` (both relative to the site root)."
    depth = frm.count('/')
    return '../'*depth + to

def sidebar_html(pages:list[dict], current:str) -> str:
    "The sidebar: pages in order, consecutive pages of one section grouped under its title."
    groups = []
    for p in pages:
        if groups and groups[-1][0] == p['section']: groups[-1][1].append(p)
        else: groups.append((p['section'], [p]))
    def li(p):
        cls = ' class="active" aria-current="page"' if p['html'] == current else ''
        return f'<li><a{cls} href="{_rel(current, p["html"])}">{markdown_html(p["title"], inline=True)}</a></li>'
    out = ['<ul>']
    for sec, ps in groups:
        if sec is None: out += [li(p) for p in ps]
        else: out.append(f'<li class="gpm-section"><div class="gpm-section-title">{escape(str(sec))}</div><ul>'
                         + ''.join(li(p) for p in ps) + '</ul></li>')
    return '\n'.join(out + ['</ul>'])

def _postprocess(html:str, page:dict, site:dict, nb_dir:Path, out:Path) -> str:
    "Links made relative, local images copied, network references dropped, folds, API blocks, page contents."
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, 'html.parser')
    main = soup.find('main')
    doc_url = site['doc_url']
    html_of = {p['file']: p['html'] for p in site['pages']}
    # matplotlib's jshtml animations link Font Awesome from a CDN: drop it (site.css draws the icons)
    for tag in soup.find_all('link', href=re.compile(r'^(https?:)?//')):
        if 'font-awesome' in tag['href']: tag.decompose()
    for a in soup.find_all('a', href=True):
        href = a['href']
        if doc_url and href.startswith(doc_url):
            href = _rel(page['html'], href[len(doc_url):].lstrip('/'))
            a['data-doclink'] = ''  # an API link nbdev made; checked once every page exists
        m = re.match(r'^([^:#?]+\.ipynb)(#.*)?$', href)
        if m:
            target = (Path(page['file']).parent/m[1]).as_posix()
            target = os.path.normpath(target).replace(os.sep, '/')
            if target in html_of: href = _rel(page['html'], html_of[target]) + (m[2] or '')
        a['href'] = href
    for img in soup.find_all('img', src=True):
        src = img['src']
        if re.match(r'^([a-z]+:|/|#)', src) or src.startswith(page['stem'] + '_files/'): continue
        f = nb_dir/src
        if f.is_file():
            dst = out/Path(page['html']).parent/src
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
    # code folding (#| code-fold, nbdev's exported-source cells)
    for cell in soup.select('div.celltag_gpm-fold, div.celltag_gpm-fold-show'):
        inp = cell.select_one('.jp-Cell-inputWrapper')
        if inp is None: continue
        det = soup.new_tag('details', attrs={'class': 'gpm-fold'})
        if 'celltag_gpm-fold-show' in cell['class']: det['open'] = ''
        summ = soup.new_tag('summary')
        summ.string = page['summaries'].get(cell.get('id', '').removeprefix('cell-id='), 'Code')
        inp.wrap(det); det.insert(0, summ)
    for cell in soup.select('div.celltag_gpm-api'): cell['class'] = cell['class'] + ['gpm-api']
    # headings: the id nbdev's doc links use (`core.html#seed_everything`), and the page's contents
    ids = {t['id'] for t in soup.find_all(id=True)}
    toc = []
    for h in main.find_all(['h2', 'h3', 'h4']):
        text = h.get_text(' ', strip=True).rstrip('¶').strip()
        api = h.find_parent(class_='gpm-api') is not None
        if api:
            key = text.lower()
            if key not in ids:
                h.insert(0, soup.new_tag('a', attrs={'id': key, 'class': 'gpm-anchor'})); ids.add(key)
        if h.name == 'h4' or not h.get('id'): continue
        label = BeautifulSoup(h.decode_contents(), 'html.parser')
        for a in label.find_all('a'):
            if {'anchor-link', 'gpm-anchor'} & set(a.get('class', [])): a.decompose()
            else: a.unwrap()
        toc.append((h.name, h['id'], label.decode().strip(), api))
    aside = soup.find('aside', class_='gpm-toc')
    if toc:
        items = ''.join(f'<li class="gpm-toc-{n}{" gpm-toc-api" if api else ""}"><a href="#{escape(i)}">{t}</a></li>'
                        for n, i, t, api in toc)
        aside.append(BeautifulSoup(f'<div class="gpm-toc-title">On this page</div><ul>{items}</ul>', 'html.parser'))
    else: aside.decompose()
    return str(soup)

def _drop_dangling_doclinks(out:Path, pages:list[dict]) -> list[str]:
    "Unwrap nbdev's API links whose target has no entry on the site (e.g. a private `_helper`); return them."
    from bs4 import BeautifulSoup
    soups = {p['html']: BeautifulSoup((out/p['html']).read_text(encoding='utf-8'), 'html.parser') for p in pages}
    ids = {k: {t['id'] for t in s.find_all(id=True)} for k, s in soups.items()}
    dropped = []
    for name, soup in soups.items():
        changed = False
        for a in soup.find_all('a', attrs={'data-doclink': True}):
            target, _, frag = a['href'].partition('#')
            target = os.path.normpath(os.path.join(os.path.dirname(name), target)).replace(os.sep, '/') if target else name
            if target in ids and (not frag or frag in ids[target]): del a['data-doclink']; continue
            dropped.append(a.get_text()); a.unwrap(); changed = True
        for a in soup.find_all('a', attrs={'data-doclink': True}): del a['data-doclink']
        (out/name).write_text(str(soup), encoding='utf-8')
    return dropped

def _copy_assets(out:Path, nbs_path:Path) -> None:
    import importlib.util, nbconvert
    (out/'assets').mkdir(parents=True, exist_ok=True)
    lab = Path(sys.prefix)/'share/jupyter/nbconvert/templates/lab/static'
    if not lab.exists():
        from jupyter_core.paths import jupyter_path
        lab = next(Path(p)/'nbconvert/templates/lab/static' for p in jupyter_path()
                   if (Path(p)/'nbconvert/templates/lab/static').exists())
    shutil.copy2(lab/'index.css', out/'assets/lab-index.css')
    shutil.copy2(lab/'theme-light.css', out/'assets/lab-theme-light.css')
    shutil.copy2(ASSETS/'site.css', out/'assets/site.css')
    if (nbs_path/'styles.css').exists(): shutil.copy2(nbs_path/'styles.css', out/'styles.css')
    spec = importlib.util.find_spec('jupyter_server_mathjax')
    if spec is None:
        raise SystemExit("MathJax is missing: install the dev requirements (bash tools/setup.sh), "
                         "which include the PyPI package jupyter-server-mathjax")
    mj = Path(spec.submodule_search_locations[0])/'static'
    def skip(d, names):  # what the site never loads: other outputs, accessibility add-on, other languages
        rel = Path(d).relative_to(mj).as_posix()
        return [n for n in names if (rel, n) in {('jax/output', 'SVG'), ('extensions', 'a11y'), ('.', 'localization')}]
    shutil.copytree(mj, out/'mathjax', ignore=skip, dirs_exist_ok=True)

def build_site(out:Path, root:Path=ROOT, quiet:bool=False) -> dict:
    "Build the site into `out`; return its manifest (also written to `out/site.json`)."
    from nbdev.config import get_config
    t0 = time.time()
    cfg = get_config(path=root)
    nbs_path = Path(cfg.nbs_path)
    entries = read_sidebar(root/'_quarto.yml', nbs_path)
    probs = sidebar_problems(entries, nbs_path)
    if probs: raise SystemExit('the sidebar of _quarto.yml and the notebooks disagree:\n  ' + '\n  '.join(probs))
    doc_url = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/') + '/'
    out = Path(out).resolve()
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out/'site.json').is_file()):
            raise SystemExit(f"refusing to replace {out}: it is not empty and is not a site built by this tool "
                             "(no site.json); choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # 1. nbdev processing (executes only imports, exported cells and show_doc, like nbdev_docs)
    processed = []
    with _nbdev_env(nbs_path), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for e in entries:
            t = time.time()
            nb = process_notebook(nbs_path/e['file'])
            fm = split_frontmatter(nb)
            apply_cell_options(nb)
            html = page_name(e['file'])
            title = str(e['text'] or fm.get('title') or Path(e['file']).stem)
            processed.append((nb, dict(file=e['file'], html=html, stem=Path(html).stem, section=e['section'],
                                       title=title, description=str(fm.get('description', '')))))
            if not quiet: print(f"  processed {e['file']} ({time.time()-t:.1f} s)", flush=True)
    mixed = _filter_defaults()[1].mixed
    if mixed and not quiet:
        print("  note: nbdev_docs would run these cells, which mix imports with computation; this build ran only\n"
              "  their imports (put imports in a cell of their own to keep nbdev_docs from running them):")
        for f, first in mixed: print(f"    {Path(f).name}: {first}")
    pages = [p for _, p in processed]
    site = dict(pages=pages, doc_url=doc_url)
    # 2. rendering
    exporter = _make_exporter()
    for i, (nb, page) in enumerate(processed):
        page['summaries'] = {}
        for c in nb.cells:
            if 'gpm_summary' in c.metadata: page['summaries'][c.get('id')] = c.metadata['gpm_summary']
        plain = re.sub(r'[`$*_\\]', '', page['title'])
        nb.metadata['title'] = f"{plain} – {cfg.title}" if page['html'] != 'index.html' else cfg.title
        res = dict(unique_key=page['stem'], output_files_dir=f"{page['stem']}_files",
                   metadata=dict(name=page['title'], path=str(nbs_path)),
                   site=dict(root=_rel(page['html'], ''), title=cfg.title, description=cfg.get('description', ''),
                             sidebar_html=sidebar_html(pages, page['html']), page_title=markdown_html(page['title'], inline=True),
                             title_id=re.sub(r'\W+', '-', page['title'].lower()).strip('-') or 'title',
                             page_description=markdown_html(page['description'], inline=True),
                             prev=dict(href=_rel(page['html'], pages[i-1]['html']),
                                       title=markdown_html(pages[i-1]['title'], inline=True)) if i else None,
                             next=dict(href=_rel(page['html'], pages[i+1]['html']),
                                       title=markdown_html(pages[i+1]['title'], inline=True)) if i+1 < len(pages) else None))
        body, res = exporter.from_notebook_node(nb, resources=res)
        dst = out/page['html']
        dst.parent.mkdir(parents=True, exist_ok=True)
        for fname, data in res.get('outputs', {}).items():
            f = dst.parent/fname
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
        body = _postprocess(body, page, site, (nbs_path/page['file']).parent, out)
        dst.write_text(body, encoding='utf-8')
        page['n_math'] = body.count('<script type="math/tex')
        page['n_images'] = len(res.get('outputs', {}))
        page['n_api'] = len(re.findall(r'class="[^"]*celltag_gpm-api', body))
        del page['summaries']
    unlinked = _drop_dangling_doclinks(out, pages)
    if unlinked and not quiet:
        print(f"  unlinked {len(unlinked)} API link(s) to symbols without an entry (private or not shown): "
              + ', '.join(sorted(set(unlinked))))
    _copy_assets(out, nbs_path)
    manifest = dict(title=cfg.title, pages=pages, seconds=round(time.time()-t0, 1))
    (out/'site.json').write_text(json.dumps(manifest, indent=1), encoding='utf-8')
    if not quiet:
        print(f"built {len(pages)} pages ({sum(p['n_math'] for p in pages)} formulas, "
              f"{sum(p['n_images'] for p in pages)} figures, {sum(p['n_api'] for p in pages)} API entries) "
              f"into {out} in {time.time()-t0:.1f} s; open {out/'index.html'}")
    return manifest

# ---------------------------------------------------------------------------------------------------------
# README.md from nbs/index.ipynb
# ---------------------------------------------------------------------------------------------------------

def _text(x) -> str: return ''.join(x) if isinstance(x, list) else str(x)

def readme_from_index(root:Path=ROOT) -> tuple[str, dict]:
    "README.md's text and its image files `{relative path: bytes}`, from the processed `nbs/index.ipynb`."
    from nbdev.config import get_config
    cfg = get_config(path=root)
    nbs_path = Path(cfg.nbs_path)
    src = nbs_path/cfg.get('readme_nb', 'index.ipynb')
    with _nbdev_env(nbs_path), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        nb = process_notebook(src)
    fm = split_frontmatter(nb)
    apply_cell_options(nb)
    parts, files = [f"# {fm.get('title', cfg.title)}"], {}
    if fm.get('description'): parts.append(f"> {fm['description']}")
    for i, c in enumerate(nb.cells, 1):
        if c.cell_type == 'markdown': parts.append(c.source.strip('\n')); continue
        if c.cell_type != 'code': continue
        if not c.metadata.get('transient', {}).get('remove_source'): parts.append(f"```python\n{c.source}\n```")
        for j, o in enumerate(c.outputs, 1):
            if o.output_type == 'stream': parts.append('```\n' + _text(o.text).rstrip('\n') + '\n```')
            elif o.output_type == 'error': parts.append(f"```\n{o.ename}: {o.evalue}\n```")
            else:
                d = o.get('data', {})
                if 'image/png' in d:
                    name = f"{README_FILES}/cell-{i}-output-{j}.png"
                    files[name] = base64.b64decode(_text(d['image/png']))
                    parts.append(f"![]({name})")
                elif 'text/markdown' in d: parts.append(_text(d['text/markdown']).strip('\n'))
                elif 'text/html' in d and '<script' not in _text(d['text/html']): parts.append(_text(d['text/html']).strip('\n'))
                elif 'text/plain' in d: parts.append('```\n' + _text(d['text/plain']).rstrip('\n') + '\n```')
    return '\n\n'.join(parts) + '\n', files

def write_readme(root:Path=ROOT) -> None:
    text, files = readme_from_index(root)
    d = root/README_FILES
    if d.exists(): shutil.rmtree(d)
    for name, data in files.items():
        (root/name).parent.mkdir(parents=True, exist_ok=True)
        (root/name).write_bytes(data)
    (root/'README.md').write_text(text, encoding='utf-8')
    print(f"wrote README.md ({len(text)} characters) and {len(files)} image(s) in {README_FILES}/")

def readme_problems(root:Path=ROOT) -> list[str]:
    "Differences between README.md (+ README_files/) and what nbs/index.ipynb gives (empty when up to date)."
    text, files = readme_from_index(root)
    probs = []
    readme = root/'README.md'
    if not readme.exists() or readme.read_text(encoding='utf-8') != text: probs.append('README.md differs')
    d = root/README_FILES
    have = {f.relative_to(root).as_posix() for f in d.rglob('*') if f.is_file()} if d.exists() else set()
    probs += [f"{n} is missing or differs" for n, b in files.items() if n not in have or (root/n).read_bytes() != b]
    probs += [f"{n} is not made from the notebook any more" for n in sorted(have - set(files))]
    return probs

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', help="output folder of the site (default: settings.ini's doc_path, _docs)")
    ap.add_argument('--readme', action='store_true', help='write README.md and README_files/ from nbs/index.ipynb')
    ap.add_argument('--check-readme', action='store_true', help='exit 1 when README.md is out of date')
    ap.add_argument('--quiet', action='store_true')
    a = ap.parse_args(argv)
    if a.check_readme:
        probs = readme_problems()
        if probs:
            print('README.md is out of date with nbs/index.ipynb (' + '; '.join(probs) + ').\n'
                  'Regenerate it: .venv/bin/python tools/build_docs.py --readme', file=sys.stderr)
            return 1
        print('README.md is up to date with nbs/index.ipynb'); return 0
    if a.readme: write_readme(); return 0
    from nbdev.config import get_config
    out = Path(a.out) if a.out else ROOT/get_config(path=ROOT).get('doc_path', '_docs')
    build_site(out, quiet=a.quiet)
    return 0

if __name__ == '__main__': sys.exit(main())
