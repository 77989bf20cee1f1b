"The training loop: checkpoints (atomic, validated), exact resume, NaN stops, callbacks."
import json, random
import numpy as np
import pytest, torch
from torch import nn
from gpm_nb.core import seed_everything
from gpm_nb.train import (Trainer, Callback, LogCB, EvalCB, CheckpointCB, BestCheckpointCB, LinearDecayCB, EMA, save_checkpoint,
                          load_checkpoint, read_checkpoint, CheckpointError, NonFiniteLossError)

class Toy(nn.Module):
    def __init__(self, nan_after=None, width=3):
        super().__init__(); self.lin = nn.Linear(width, 1); self.opt = torch.optim.Adam(self.parameters(), 1e-2)
        self.nan_after, self.calls = nan_after, 0
    def optimizers(self): return {'opt': self.opt}
    def train_step(self):
        self.calls += 1
        x = torch.randn(16, self.lin.in_features); loss = (self.lin(x).squeeze(1) - x.sum(1)).pow(2).mean()
        self.opt.zero_grad(); loss.backward(); self.opt.step()
        return {'loss': float('nan') if self.nan_after and self.calls > self.nan_after else loss.item()}

def run(n, tmp, resume=None, save=None):
    seed_everything(0); log = LogCB()
    tr = Trainer(Toy(), [log] + ([CheckpointCB(save, every=10**6)] if save else []))
    if resume: seed_everything(99); tr.resume(resume)
    tr.fit(n); return [r['loss'] for r in log.history], tr

def test_resume_is_exact(tmp_path):
    full, _ = run(40, tmp_path)
    a, _ = run(17, tmp_path, save=tmp_path/'c.pt')
    b, tr = run(40, tmp_path, resume=tmp_path/'c.pt')
    assert len(full) == 40 and a + b == full and tr.step == 40

def test_resume_differs_without_rng(tmp_path):
    "The RNG state matters: restoring weights and optimiser alone would not reproduce the run."
    full, _ = run(30, tmp_path)
    run(10, tmp_path, save=tmp_path/'c.pt')
    seed_everything(5); m = Toy(); load_checkpoint(tmp_path/'c.pt', m, restore_rng=False)
    log = LogCB(); tr = Trainer(m, [log]); tr.step = 10; tr.fit(30)
    assert [r['loss'] for r in log.history] != full[10:]

def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    seed_everything(0); ck = tmp_path/'c.pt'
    tr = Trainer(Toy(nan_after=25), [CheckpointCB(ck, every=10)])
    with pytest.raises(NonFiniteLossError, match=r'step 26.*last good checkpoint .*step 20'):
        tr.fit(100)
    assert read_checkpoint(ck)['step'] == 20
    m = Toy(); load_checkpoint(ck, m)
    assert torch.isfinite(m.lin.weight).all()

def test_atomic_write_survives_a_crash(tmp_path, monkeypatch):
    ck = tmp_path/'c.pt'; m = Toy()
    save_checkpoint(ck, m, step=1); good = ck.read_bytes()
    def boom(obj, f): f.write(b'partial'); raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', boom)
    with pytest.raises(OSError): save_checkpoint(ck, m, step=2)
    assert ck.read_bytes() == good and read_checkpoint(ck)['step'] == 1

@pytest.mark.parametrize('content, msg', [(None, 'no checkpoint at'), (b'\x00garbage', 'corrupt or truncated'),
                                          ('other', 'not a gpm_nb checkpoint')])
def test_bad_checkpoints(tmp_path, content, msg):
    p = tmp_path/'c.pt'
    if content == 'other': torch.save({'state': torch.zeros(2)}, p)
    elif content is not None: p.write_bytes(content)
    with pytest.raises(CheckpointError, match=msg): load_checkpoint(p, Toy())

def test_truncated_checkpoint(tmp_path):
    p = tmp_path/'c.pt'; save_checkpoint(p, Toy(), step=3)
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match='corrupt or truncated'): load_checkpoint(p, Toy())

def test_mismatched_checkpoint(tmp_path):
    p = tmp_path/'c.pt'; save_checkpoint(p, Toy(width=3), step=3)
    with pytest.raises(CheckpointError, match='does not match this model'): load_checkpoint(p, Toy(width=5))

def test_log_eval_and_checkpoint_callbacks(tmp_path):
    seed_everything(0)
    calls = []
    ev = EvalCB(lambda m: calls.append(1) or {'w': m.lin.weight.sum().item()}, every=10)
    tr = Trainer(Toy(), [LogCB(tmp_path/'log.jsonl', every=5), ev, CheckpointCB(tmp_path/'c.pt', every=10)]).fit(25)
    rows = [json.loads(l) for l in (tmp_path/'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [5, 10, 15, 20, 25, 25]       # the final evaluation runs after step 25
    assert 'eval_w' in rows[1] and 'eval_w' not in rows[0] and 'eval_w' in rows[-1] and 'loss' in rows[-2]
    assert len(calls) == 3 and read_checkpoint(tmp_path/'c.pt')['step'] == 25
    with pytest.raises(ValueError, match='below the step'): tr.fit(10)

class LrSpy(Callback):
    "Record the learning rate every step trained with."
    order = 50
    def __init__(self): self.seen = []
    def after_step(self, tr): self.seen.append(tr.model.opt.param_groups[0]['lr'])

def lrs_of(n, total, save=None, resume=None):
    seed_everything(0); spy = LrSpy()
    tr = Trainer(m := Toy(), [LinearDecayCB(0.5, total), spy] + ([CheckpointCB(save, every=10**6)] if save else []))
    if resume: seed_everything(99); tr.resume(resume)
    tr.fit(n); return spy.seen, m

def scripted_eval(values):
    "An EvalCB whose evaluations return the next of `values` as `energy`."
    it = iter(values)
    return EvalCB(lambda m: {'energy': next(it)}, every=5)

def test_best_checkpoint_keeps_the_lowest_evaluation(tmp_path):
    seed_everything(0)
    best = BestCheckpointCB(tmp_path/'best.pt', tag='x')
    tr = Trainer(Toy(), [scripted_eval([0.5, 0.2, float('nan'), 0.3, 0.2]), CheckpointCB(tmp_path/'last.pt', every=5), best]).fit(25)
    ck = read_checkpoint(tmp_path/'best.pt')
    assert ck['step'] == 10 and best.best == {'step': 10, 'energy': 0.2} and ck['extra'] == {'metrics': best.best, 'tag': 'x'}
    assert read_checkpoint(tmp_path/'last.pt')['step'] == 25       # a tie (0.2 at step 25) and a NaN do not replace it
    weights = read_checkpoint(tmp_path/'last.pt')['model']['lin.weight']
    assert not torch.equal(ck['model']['lin.weight'], weights)     # the weights of step 10, not of the end

def test_best_checkpoint_on_resume_and_on_a_new_run(tmp_path, capsys):
    def fit(values, n, resume=False):
        cb = BestCheckpointCB(tmp_path/'best.pt'); tr = Trainer(Toy(), [scripted_eval(values), CheckpointCB(tmp_path/'last.pt', every=5), cb])
        if resume: tr.resume(tmp_path/'last.pt')
        tr.fit(n); return cb
    fit([0.4, 0.1], 10)
    cb = fit([0.3, 0.05], 20, resume=True)                          # resumed: 0.3 at step 15 does not beat 0.1; 0.05 does
    assert cb.best['step'] == 20 and read_checkpoint(tmp_path/'best.pt')['step'] == 20
    (tmp_path/'best.pt').write_bytes(b'junk')
    cb = fit([0.9], 25, resume=True)                                # an unreadable file: a warning, then this run's best
    assert 'unreadable' in capsys.readouterr().err and read_checkpoint(tmp_path/'best.pt')['step'] == 25
    cb = fit([float('nan')], 3)                                     # a new run that never evaluates: no stale file
    assert cb.best is None and not (tmp_path/'best.pt').exists()

def test_linear_decay_schedule_survives_resume(tmp_path):
    full, m_full = lrs_of(40, 40)
    assert len(full) == 40 and full[:20] == [1e-2] * 20 and full[-1] == pytest.approx(1e-2 / 20)
    assert all(a > b for a, b in zip(full[20:], full[21:]))
    head, _ = lrs_of(25, 40, save=tmp_path/'c.pt')
    assert read_checkpoint(tmp_path/'c.pt')['step'] == 25
    tail, m_res = lrs_of(40, 40, resume=tmp_path/'c.pt')
    assert len(head) == 25 and len(tail) == 15
    assert head + tail == full                                   # the full lr sequence, exactly
    assert torch.equal(m_res.lin.weight, m_full.lin.weight)      # and so the same model
    assert m_res.opt.param_groups[0]['initial_lr'] == 1e-2       # the base lr travels with the optimiser state

def test_linear_decay_without_total_jumps_on_resume(tmp_path):
    "Why `total` exists: without it the interrupted run decays towards its own end, then the resumed one jumps."
    head, _ = lrs_of(25, None, save=tmp_path/'c.pt')
    tail, _ = lrs_of(40, None, resume=tmp_path/'c.pt')
    full, _ = lrs_of(40, 40)
    assert lrs_of(40, None)[0] == full and head + tail != full and tail[0] > 5 * head[-1]

def test_linear_decay_refuses_to_train_past_total():
    with pytest.raises(ValueError, match='past the learning-rate schedule.*total=40'): lrs_of(41, 40)
    with pytest.raises(ValueError, match='frac'): LinearDecayCB(1.5)
    with pytest.raises(ValueError, match='total'): LinearDecayCB(0.5, total=0)

def noisy_eval(m):
    "An evaluation that draws from every generator and samples from the model."
    x = torch.randn(64, m.lin.in_features)
    return {'out': m.lin(x).mean().item(), 'u': random.random(), 'v': float(np.random.rand())}

def trained(cbs, n=30):
    seed_everything(0); m = Toy(); Trainer(m, cbs).fit(n); return m

def test_eval_does_not_change_training():
    calls = []
    ev = EvalCB(lambda m: calls.append(1) or noisy_eval(m), every=1)
    plain, evald = trained([]), trained([ev])
    assert len(calls) == 30                                      # it did evaluate, every step
    assert torch.equal(evald.lin.weight, plain.lin.weight) and torch.equal(evald.lin.bias, plain.lin.bias)
    log_e, log_p = LogCB(), LogCB(); trained([log_e, ev]); trained([log_p])
    assert [r['loss'] for r in log_e.history] == [r['loss'] for r in log_p.history]

def test_eval_without_fork_would_change_training():
    "Control: the same evaluation drawn from the training stream does change the weights, so the test above can fail."
    naive = type('Naive', (Callback,), {'after_step': lambda s, tr: noisy_eval(tr.model)})()
    assert not torch.equal(trained([naive]).lin.weight, trained([]).lin.weight)

def test_eval_is_deterministic():
    ev = EvalCB(noisy_eval, every=5, seed=3)
    m = trained([]); a = ev.evaluate(m); torch.randn(10); random.random()
    assert ev.evaluate(m) == a and m.training                   # same state, same metrics; mode restored
    assert EvalCB(noisy_eval, seed=4).evaluate(m) != a
    e1, e2 = EvalCB(noisy_eval, every=10), EvalCB(noisy_eval, every=10)
    m1, m2 = trained([e1]), trained([e2])                        # two identical runs report identical metrics
    assert e1.evaluate(m1) == e2.evaluate(m2)
    with pytest.raises(ValueError, match='every'): EvalCB(noisy_eval, every=0)

def test_ema_update_formula_and_no_grad():
    seed_everything(0); net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)); ema = EMA(net, decay=0.5)
    avg0 = ema.avg[0].weight.clone()
    with torch.no_grad(): net[0].weight.add_(1.); net[1].running_var.fill_(7.)
    ema.update(net)                                              # d_0 = min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.avg[0].weight, 0.1 * avg0 + 0.9 * net[0].weight, atol=1e-6)
    assert torch.equal(ema.avg[1].running_var, torch.full((4,), 7.))
    for n in range(1, 30): ema.update(net)
    assert ema.n_updates.item() == 30                            # d_n reached 0.5: (1 + n) / (10 + n) >= 0.5 from n = 8
    avg = ema.avg[0].weight.clone()
    with torch.no_grad(): net[0].weight.mul_(3.)
    ema.update(net)
    assert torch.allclose(ema.avg[0].weight, 0.5 * avg + 0.5 * net[0].weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.avg.parameters()) and all(p.requires_grad for p in net.parameters())
    assert not ema.eval()(torch.randn(2, 3)).requires_grad           # calling the EMA calls the average

def test_ema_validation_and_parameterless():
    for d in (1., -0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='decay'): EMA(nn.Linear(2, 2), decay=d)
    EMA(nn.Linear(2, 2), decay=0.)
    with pytest.raises(ValueError, match='parameters and buffers'): EMA(nn.Linear(2, 2)).update(nn.Linear(2, 3, bias=False))
    idle = EMA(nn.Identity())
    for _ in range(3): idle.update(nn.Identity())
    assert idle.n_updates.item() == 3 and list(idle.parameters()) == [] and torch.equal(idle(torch.ones(2)), torch.ones(2))

class WithEMA(Toy):
    def __init__(self):
        super().__init__(); self.ema = EMA(self.lin, 0.9)
    def train_step(self):
        out = super().train_step(); self.ema.update(self.lin); return out

def test_ema_checkpoints_with_the_model(tmp_path):
    seed_everything(0); m = WithEMA(); Trainer(m, [CheckpointCB(tmp_path/'c.pt', every=10**6)]).fit(12)
    assert not torch.equal(m.ema.avg.weight, m.lin.weight)
    m2 = WithEMA(); assert not torch.equal(m2.ema.avg.weight, m.ema.avg.weight)
    load_checkpoint(tmp_path/'c.pt', m2)
    assert torch.equal(m2.ema.avg.weight, m.ema.avg.weight) and m2.ema.n_updates.item() == 12
    e = EMA(nn.Linear(3, 1)); e.load_state_dict(m.ema.state_dict())
    assert torch.equal(e.avg.bias, m.ema.avg.bias) and e.n_updates.item() == 12
