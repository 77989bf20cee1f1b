"The acceptance bars of each method's `cpu` preset on GPM's 5 Gaussians (minutes each: the slow part of the suite)."
import pytest
from gpm_nb.cli import train

BARS = {'discr_flow': 0.95, 'gan': 0.95}   # share of samples within 3 std of a mode (see 16_gpm on the cpu presets)

@pytest.mark.parametrize('method', sorted(BARS))
def test_cpu_preset_reaches_its_bar_on_gaussians5(method, tmp_path):
    m = train(method, 'gaussians5', 'cpu', out=tmp_path/method, quiet=True)
    assert 'diverged' not in m, m['diverged']
    assert m['high_quality'] >= BARS[method] and m['modes_covered'] == 5 and m['energy'] <= 0.02, m
