"The training loop: checkpoints (atomic, validated), exact resume, NaN stops, callbacks."
import json
import pytest, torch
from torch import nn
from gpm_nb.core import seed_everything
from gpm_nb.train import (Trainer, LogCB, EvalCB, CheckpointCB, save_checkpoint, load_checkpoint, read_checkpoint,
                          CheckpointError, NonFiniteLossError)

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

def test_linear_decay_schedule_survives_resume(tmp_path):
    from gpm_nb.train import LinearDecayCB
    def lrs_of(n, resume=None, save=None):
        seed_everything(0); m = Toy(); seen = []
        spy = type('Spy', (), {'order': 50, 'after_step': lambda s, tr: seen.append(m.opt.param_groups[0]['lr'])})()
        tr = Trainer(m, [LinearDecayCB(0.5), spy] + ([CheckpointCB(save, every=10**6)] if save else []))
        if resume: tr.resume(resume)
        tr.fit(n); return seen
    full = lrs_of(40)
    assert full[:20] == [1e-2] * 20 and full[-1] == pytest.approx(1e-2 / 20) and all(a > b for a, b in zip(full[20:], full[21:]))
    lrs_of(40 // 2 + 5, save=tmp_path/'c.pt')     # (a shorter run has its own schedule...)
    seed_everything(0); m = Toy(); load_checkpoint(tmp_path/'c.pt', m)
    assert m.opt.param_groups[0]['initial_lr'] == 1e-2   # ...but the base lr travels with the optimiser state
    with pytest.raises(ValueError, match='frac'): LinearDecayCB(1.5)
