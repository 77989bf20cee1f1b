"Every notebook executes top to bottom in the quick preset (each in its own process)."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

def test_notebooks_found():
    assert {'00_core.ipynb', '04_train.ipynb', '10_wgf.ipynb', '16_gpm.ipynb', '20_cli.ipynb'} <= set(NBS)

@pytest.mark.parametrize('nb', NBS)
def test_notebook_runs(nb, tmp_path):
    env = {**os.environ, 'GPM_PRESET': 'quick', 'MPLBACKEND': 'Agg'}
    r = subprocess.run([str(Path(sys.executable).parent/'nbdev_test'), '--path', str(ROOT/'nbs'/nb)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{nb} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
