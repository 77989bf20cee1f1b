"The acceptance bars of each method's `cpu` preset on GPM's 5 Gaussians (minutes each: the slow part of the suite)."
import pytest
from gpm_nb.cli import run_configs, train
from gpm_nb.report import energy_redrawn

# share of samples within 3 std of a mode, and the energy-distance bar: an absolute value (the discriminator
# methods, issue "one field protocol") or a multiple of the real-vs-real floor (the score methods, issue "scores")
BARS = {'discr_flow': (0.97, 0.02, None),   # the bar: 98.2% on this seed with its input features; seeds 1, 2: 96.9%, 97.4% (30_report)
        'gan': (0.95, 0.02, None),   # the bar: 0.957 and energy 0.0051 (3.7x the floor) on this seed with learning rates 4e-4 (41_report_gan_adam)
        'edm': (0.95, None, 3.), 'sd_flow': (0.95, None, 3.),
        'score_gan': (0.95, None, 3.),   # the bar: 0.975 and 1.05x on this seed at 45,000 iterations (46_report_score_gan_steps; 30,000 with the
                                         # push's top level annealed: 0.978 and 1.1x, 43_report_push_anneal; unannealed 0.967 and 1.2x, 42_report_push_floor);
                                         # GPM's scales gave 0.958 and 2.6x, and diverged on five other toys
        'diffflow': (0.95, None, 3.),     # its best split (1), with input features, on the 5 Gaussians: 0.978-0.980, 1.0-1.9x the floor (18_diffflow, 33_report_diffflow)
        'diffusion_gan': (0.95, None, 3.)}   # 0.983 and 2.4x over these four draws, 1.3x over 16 (seed 1: 0.981, 1.2x), with input features at the data's scale
                                             # (44_report_diffgan_penalty; without them 0.960 and 4.0x over 16, the modes drawn too peaked)

@pytest.mark.parametrize('method', sorted(BARS))
def test_cpu_preset_reaches_its_bar_on_gaussians5(method, tmp_path):
    steps = run_configs(method, 'cpu')[0].steps   # one evaluation, at the end: evaluations never touch training's randomness
    m = train(method, 'gaussians5', 'cpu', out=tmp_path/method, quiet=True, eval_every=steps)   # (test_periodic_evaluation_does_not_change_training),
                                                   # so this trains the preset's model, without its 4-15 evaluations on the way (about 1 s each)
    assert 'diverged' not in m, m['diverged']
    hq, energy, x_floor = BARS[method]
    assert m['high_quality'] >= hq and m['modes_covered'] == 5, m
    if energy is not None: assert m['energy'] <= energy, m
    else:   # one pair of 5000-sample sets is noisy (two real sets differ by 0.0008 to 0.0025): average 4 fresh draws of the run
        ratio = energy_redrawn(tmp_path/method, 'gaussians5')
        assert ratio <= x_floor, (ratio, m)
