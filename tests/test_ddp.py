"Data parallelism under torchrun with 2 Gloo processes on CPU: the global-batch step, exact resume, rank-0 writes, failures."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch
from gpm_nb.cli import read_log

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'GPM_DIST_TIMEOUT': '60'}

def launch(args:list, nproc:int=2, timeout:int=300) -> subprocess.CompletedProcess:
    "Run `args` (a script and its arguments, or a console script with no_python) under torchrun with `nproc` processes."
    cmd = [str(BIN/'torchrun'), '--standalone', f'--nproc_per_node={nproc}', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)

# Two networks with an optimiser each, stepped one after the other like a discriminator and a generator; each process
# draws its own data with the global RNG; argv: out, n_steps, [checkpoint to write at the end | resume from]
TWO_NETS = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from gpm_nb.core import seed_everything
    from gpm_nb.train import Trainer, LogCB, CheckpointCB, init_distributed, rank_seed
    rank, world = init_distributed()
    class TwoNets(nn.Module):
        def __init__(self, global_batch=None):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.oa, self.ob = torch.optim.Adam(self.a.parameters(), 1e-2), torch.optim.SGD(self.b.parameters(), 1e-1, momentum=.9)
            self.x = global_batch
        def optimizers(self): return {'a': self.oa, 'b': self.ob}
        def train_step(self):
            x = torch.randn(16, 3) if self.x is None else self.x[rank::world]
            la = (self.a(x) - 1).pow(2).mean(); self.oa.zero_grad(); la.backward(); self.oa.step()
            lb = self.b(self.a(x).detach()).pow(2).mean(); self.ob.zero_grad(); lb.backward(); self.ob.step()
            return {'la': la.item(), 'lb': lb.item()}
    out, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seed_everything(rank_seed(0, rank))
    g = torch.Generator().manual_seed(1)
    m = TwoNets(torch.randn(32, 3, generator=g) if mode == 'fixed' else None)
    log = LogCB(); tr = Trainer(m, [log] + ([CheckpointCB(sys.argv[4], every=10**9)] if mode == 'save' else []))
    if mode == 'resume': tr.resume(sys.argv[4])
    tr.fit(n)
    if rank == 0: torch.save(dict(state=m.state_dict(), losses=[r['la'] + r['lb'] for r in log.history]), out)
""")

@pytest.fixture(scope='module')
def script(tmp_path_factory):
    p = tmp_path_factory.mktemp('ddp')/'two_nets.py'; p.write_text(TWO_NETS); return p

def _run(script, out, n, mode, ckpt='', nproc=2):
    r = launch([str(script), str(out), str(n), mode, str(ckpt)], nproc) if nproc > 1 else \
        subprocess.run([sys.executable, str(script), str(out), str(n), mode, str(ckpt)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)

def test_two_processes_make_the_step_of_one_on_the_global_batch(script, tmp_path):
    "Each process takes half of a fixed batch of 32; the weights after 15 steps match one process on all 32."
    one, two = _run(script, tmp_path/'1.pt', 15, 'fixed', nproc=1), _run(script, tmp_path/'2.pt', 15, 'fixed')
    for k, v in one['state'].items(): torch.testing.assert_close(two['state'][k], v, atol=1e-5, rtol=1e-5, msg=k)
    torch.testing.assert_close(torch.tensor(two['losses']), torch.tensor(one['losses']), atol=1e-5, rtol=1e-5)

def test_resume_under_two_processes_is_exact(script, tmp_path):
    "10 steps, a checkpoint (every process's RNG gathered), 10 more from it = 20 uninterrupted, with random data per process."
    full = _run(script, tmp_path/'full.pt', 20, 'random')
    first = _run(script, tmp_path/'first.pt', 10, 'save', tmp_path/'ck.pt')
    ck = torch.load(tmp_path/'ck.pt', weights_only=True)
    assert len(ck['rng_ranks']) == 2 and not torch.equal(ck['rng_ranks'][0]['torch'], ck['rng_ranks'][1]['torch'])
    rest = _run(script, tmp_path/'rest.pt', 20, 'resume', tmp_path/'ck.pt')
    assert first['losses'] + rest['losses'] == full['losses']
    for k, v in full['state'].items(): assert torch.equal(rest['state'][k], v), k

def test_a_failing_process_stops_the_run_with_its_message(tmp_path):
    "Rank 1 raises at step 3 while rank 0 waits in a collective: torchrun stops both and reports rank 1's error."
    p = tmp_path/'fails.py'
    p.write_text(TWO_NETS.replace("    def train_step(self):\n",
                                  "    def train_step(self):\n        if rank == 1 and len(self.oa.state) and self.oa.state[next(iter(self.oa.state))]['step'] >= 3: raise RuntimeError('rank 1 broke down')\n"))
    r = launch([str(p), str(tmp_path/'x.pt'), '50', 'random', ''], timeout=240)
    assert r.returncode != 0
    assert 'rank 1 broke down' in r.stderr + r.stdout
    assert not (tmp_path/'x.pt').exists()

def test_gpm_train_under_torchrun(tmp_path):
    "Rank 0 alone writes the run folder a single process writes; resume continues it; a batch the processes cannot share is refused."
    out, args = tmp_path/'gan', ['--no-python', str(BIN/'gpm_train'), '--method', 'gan', '--data', 'gaussians5', '--preset', 'quick',
                                 '--steps', '20', '--eval_every', '10', '--batch_size', '64', '--quiet']
    r = launch(args + ['--out', str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"modes_covered"') == 1          # one process prints the metrics
    assert sorted(p.name for p in out.iterdir()) == ['best.pt', 'checkpoint.pt', 'config.json', 'metrics.json', 'samples.npy', 'samples.png', 'train_log.jsonl']
    assert json.loads((out/'config.json').read_text())['run']['batch_size'] == 64   # the global batch
    r = launch([a if a != '20' else '30' for a in args] + ['--out', str(out), '--resume'])
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [l['step'] for l in read_log(out)[0]]   # (a quick run may add a warning note at its end)
    assert steps == [10, 20, 30]
    assert len(torch.load(out/'checkpoint.pt', weights_only=True)['rng_ranks']) == 2
    r = launch([a if a != '64' else '63' for a in args] + ['--out', str(tmp_path/'odd')])
    assert r.returncode != 0 and 'batch_size 63 is not a multiple of the 2 processes' in r.stderr
