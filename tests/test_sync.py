"nbdev_export and nbdev_clean leave a clean checkout unchanged: the library is the notebooks' export."
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _tracked():
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split('\0') if f]

def _snapshot(d: Path):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob('*')
            if p.is_file() and (p.relative_to(d).parts[0] in ('gpm_nb', 'nbs')) and '__pycache__' not in p.parts}

def test_export_and_clean_are_no_ops(tmp_path):
    files = _tracked()
    assert any(f.startswith('gpm_nb/') for f in files) and any(f.endswith('.ipynb') for f in files)
    for f in files:
        src = ROOT/f
        if src.is_symlink() or not src.exists(): continue
        (tmp_path/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, tmp_path/f)
    (tmp_path/'nbs'/'_quarto.yml').unlink(missing_ok=True)
    before = _snapshot(tmp_path)
    bin_ = Path(sys.executable).parent
    for cmd in ('nbdev_export', 'nbdev_clean'):
        r = subprocess.run([str(bin_/cmd)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    after = _snapshot(tmp_path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"run nbdev_export and nbdev_clean, then commit; these changed: {changed}"
