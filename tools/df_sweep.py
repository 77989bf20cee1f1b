"""Discriminator Flow's `cpu` preset and variations of it, many runs at once on a machine with a GPU and many cores:
`gpm_train` processes on the GPU (`--gpu_workers` at a time) and single-threaded on the CPU (`--cpu_workers`), each
run's final metrics one JSON line in --out. Jobs start in the order listed until `--launch_s`; runs still going at
`--kill_s` are stopped (their line records the timeout). `39_report_ring` reads the lines written on an H200
(`nbs/df_sweep_h200.jsonl`, rounds 1 and 2).

    python tools/df_sweep.py --round 1 --out sweep.jsonl --gpu_workers 8 --cpu_workers 7
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time
from gpm_nb.report import record_args

CAND = ('--prior', 'moments', '--gp', '0.3', '--grid_anneal', '2')   # 39_report_ring's candidate; later arguments override earlier ones
GP02 = ('--prior', 'moments', '--gp', '0.2', '--grid_anneal', '2')
ROUND1 = {'cand': (), 's6000': ('--steps', '6000'), 's8000': ('--steps', '8000'), 'ema999': ('--ema', '0.999'), 'K40': ('--K', '40'),
          'eta30': ('--eta', '30'), 'eta55': ('--eta', '55'), 'lr4e-4': ('--lr', '4e-4'), 'gp0.2': ('--gp', '0.2'),
          'b256': ('--batch_size', '256'), 'anneal3': ('--grid_anneal', '3'), 'nodecay': ('--lr_decay', '0')}
ROUND2 = {'gp0.2': GP02, 'gp0.3-eta55': CAND + ('--eta', '55'), 'gp0.2-eta55': GP02 + ('--eta', '55')}

def jobs(round_:int) -> tuple:
    "(GPU jobs, CPU jobs) of a round, each (data, seed, setting, gpm_train arguments), in launch order."
    if round_ == 1:
        gpu = [(d, s, tag, CAND + ex) for d, s in (('gaussians5', 0), ('gaussians8', 0), ('gaussians5', 1), ('gaussians_uneven', 0))
               for tag, ex in ROUND1.items()]
        cpu = [(d, s, 'cand', CAND) for d, s in (('gaussians5', 3), ('gaussians5', 4), ('gaussians5', 5), ('gaussians8', 3),
                                                 ('gaussians8', 4), ('gaussians_uneven', 1), ('gaussians25', 0), ('gaussians5', 6), ('gaussians8', 5))]
    else:
        gpu = [(d, s, tag, ROUND2[tag]) for tag in ('gp0.2-eta55', 'gp0.2', 'gp0.3-eta55') for s in (1, 2, 3) for d in ('gaussians5', 'gaussians8')]
        gpu += [(d, 0, tag, ROUND2[tag]) for tag in ('gp0.2-eta55', 'gp0.2') for d in ('gaussians_uneven', 'gaussians25', 'gaussians_narrow')]
        cpu = [(d, s, tag, ROUND2[tag]) for tag in ('gp0.2-eta55', 'gp0.2') for s in (4, 5) for d in ('gaussians5', 'gaussians8')]
    return gpu, cpu

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--round', type=int, choices=(1, 2), default=1); ap.add_argument('--out', default='df_sweep.jsonl')
    ap.add_argument('--gpu_workers', type=int, default=8); ap.add_argument('--cpu_workers', type=int, default=7)
    ap.add_argument('--launch_s', type=float, default=370.); ap.add_argument('--kill_s', type=float, default=470.)
    a = ap.parse_args()
    t0, lock, runs = time.time(), threading.Lock(), tempfile.mkdtemp()
    import torch; gpu_name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    def worker(queue:list, device:str):
        while time.time() - t0 < a.launch_s:
            with lock:
                if not queue: return
                data, seed, setting, args = queue.pop(0)
            out = f'{runs}/{data}-{setting}-s{seed}'
            env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', **({'CUDA_VISIBLE_DEVICES': ''} if device == 'cpu' else {}))
            cmd = [sys.executable, '-c', 'import sys; from gpm_nb.cli import gpm_train; gpm_train(sys.argv[1:])', '--method', 'discr_flow',
                   '--data', data, '--preset', 'cpu', '--seed', str(seed), '--out', out, '--quiet',
                   *record_args(), *args]   # the preset as these runs had it (30_report's records); args override its start, penalty and grid
            rec, t = dict(data=data, seed=seed, setting=setting, args=list(args), device=device), time.time()
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(1., a.kill_s - (time.time() - t0)))
                if p.returncode: rec['error'] = p.stderr[-800:]
                m = json.load(open(f'{out}/metrics.json'))
                rec.update({k: m.get(k) for k in ('high_quality', 'modes_covered', 'n_modes', 'energy', 'energy_floor')})
            except Exception as e: rec['error'] = f'{type(e).__name__}: {e}'
            rec.update(wall_s=round(time.time() - t, 1), gpu=gpu_name, torch=torch.__version__)
            with lock:
                with open(a.out, 'a') as f: f.write(json.dumps(rec) + '\n')
                print(json.dumps(rec), flush=True)
    gpu, cpu = jobs(a.round)
    ts = ([threading.Thread(target=worker, args=(gpu, 'cuda')) for _ in range(a.gpu_workers if gpu_name else 0)]
          + [threading.Thread(target=worker, args=(cpu, 'cpu')) for _ in range(a.cpu_workers)])
    for t in ts: t.start()
    for t in ts: t.join()
    print(f'not started: {len(gpu)} GPU jobs, {len(cpu)} CPU jobs', flush=True)

if __name__ == '__main__': main()
